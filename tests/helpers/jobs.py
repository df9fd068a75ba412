"""Jobs and typed inputs for tests that drive a queue or a worker directly."""

from __future__ import annotations

import uuid
from typing import Any

from service.jobs import Job
from service.schema import Flux2FlashEditInput
from tests.helpers.images import png_data_uri


def edit_input_body(**overrides: Any) -> dict[str, Any]:
    """A small valid fal input as JSON: one 64x64 PNG reference, a 512x512 output."""
    body: dict[str, Any] = {
        "prompt": "make it #FF5733",
        "image_urls": [png_data_uri()],
        "image_size": "square",
        "seed": 1,
    }
    body.update(overrides)
    return body


def edit_input(**overrides: Any) -> Flux2FlashEditInput:
    """The typed input a job carries (what the HTTP edge parses a body into)."""
    return Flux2FlashEditInput.model_validate(edit_input_body(**overrides))


def make_job(
    job_id: str | None = None, *, input: dict[str, Any] | None = None, **fields: Any
) -> Job:  # noqa: A002
    """A job with a valid typed input (``input`` overrides fields of the default body)."""
    return Job(
        id=job_id or str(uuid.uuid4()),
        input=edit_input(**(input or {})),
        base_url=fields.pop("base_url", "http://test"),
        **fields,
    )
