"""The OpenAI Images API: ``POST /v1/images/edits`` (multipart), ``POST /v1/images/generations``
(JSON, text-to-image through the registry's text-to-image endpoints), ``GET /v1/models``. The
mapping onto the engine is :mod:`service.openai_images`.

Keys are the fal routes' (``Authorization: Bearer <key>`` or ``Key <key>``), with the same
per-key isolation; every error is OpenAI's ``{"error": {...}}``. A request runs as the same job
a fal request would (one queue, batching, safety checker, limits) and the route waits for it on
the queue's change feed, like the sync run; a client that goes away cancels it. With
``stream=true`` the answer is server-sent events: ``image_edit.partial_image`` (or
``image_generation.…``) for each preview as the worker logs it, then ``….completed`` per image.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from core.errors import Flux2Error
from service import openapi_openai as spec
from service import strict_json
from service.endpoints import Endpoint
from service.job_access import AsyncJobs
from service.jobs import Job, JobStatus, JobView, Outcome
from service.openai_images import (
    MAX_IMAGE_PARTS,
    ImageRequest,
    Model,
    OpenAIError,
    Operation,
    Reference,
    auto_size,
    b64_of,
    fal_body,
    find_model,
    images_response,
    input_errors,
    model_json,
    models,
    outcome_error,
    output_images,
    parse_size,
    usage,
)
from service.previews import read_note
from service.submission import caller, new_job

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])

#: How often, while a job has not changed, the route looks whether the client is still there.
DISCONNECT_CHECK_SECONDS = 0.5
#: A stream with no news sends a comment line this often.
STREAM_PING_SECONDS = 15.0
#: The operations that check the API key: all of them.
KEYED = frozenset(
    {"openai_models", "openai_model", "openai_images_edits", "openai_images_generations"}
)
#: Form limits: image parts (and a mask, to refuse it by name), text fields, and their size.
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 256 * 1024
STARTED = int(time.time())


def _state(request: Request) -> Any:
    return request.app.state.flux2


def _endpoints(request: Request) -> tuple[Endpoint, ...]:
    """The endpoints this server answers (``FLUX2_ENDPOINTS``)."""
    endpoints: tuple[Endpoint, ...] = _state(request).settings.serving.enabled()
    return endpoints


@router.get(
    "/models",
    operation_id="openai_models",
    summary="OpenAI: the models served here",
    response_class=Response,
    responses=spec.MODELS_RESPONSES,
)
async def list_models(request: Request) -> Response:
    try:
        caller(request)
    except Flux2Error as exc:
        return OpenAIError.of(exc).response()
    return JSONResponse(
        {
            "object": "list",
            "data": [model_json(model, STARTED) for model in models(_endpoints(request))],
        }
    )


@router.get(
    "/models/{name:path}",
    operation_id="openai_model",
    summary="OpenAI: one model",
    response_class=Response,
    responses=spec.MODEL_RESPONSES,
)
async def get_model(request: Request, name: str) -> Response:
    try:
        caller(request)
        for model in models(_endpoints(request)):
            if name == model.id or name in model.aliases:
                return JSONResponse(model_json(model, STARTED))
        raise OpenAIError(
            404, f"The model '{name[:100]}' is not served here", code="model_not_found"
        )
    except Flux2Error as exc:
        return OpenAIError.of(exc).response()
    except OpenAIError as exc:
        return exc.response()


@router.post(
    "/images/edits",
    operation_id="openai_images_edits",
    summary="OpenAI: edit images (multipart: image or image[], prompt, …)",
    response_class=Response,
    openapi_extra=spec.EDITS_BODY,
    responses=spec.IMAGES_RESPONSES,
)
async def edits(request: Request) -> Response:
    form: FormData | None = None
    try:
        caller(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise OpenAIError(400, "send the images as multipart/form-data", code="bad_request")
        form = await _form(request)
        if form.get("mask") is not None:
            raise OpenAIError(
                400,
                "mask is not supported: FLUX.2 edits need no mask; describe the edit in the prompt",
                param="mask",
                code="unsupported_parameter",
            )
        uploads = [v for key in ("image", "image[]") for v in form.getlist(key)]
        if not uploads:
            raise OpenAIError(400, "image is required", param="image", code="missing_image")
        if len(uploads) > MAX_IMAGE_PARTS:
            raise OpenAIError(
                400, f"at most {MAX_IMAGE_PARTS} images", param="image", code="too_many_images"
            )
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key in ("image", "image[]"):
                continue
            if not isinstance(value, str):
                raise OpenAIError(400, f"{key} must be a text field", param=key, code="bad_field")
            fields[key] = value
        parsed = ImageRequest.parse(fields)
        limit = _state(request).settings.fetch.fetch_max_bytes
        references = []
        for index, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                raise OpenAIError(400, "image must be a file", param="image", code="bad_field")
            data = await upload.read(limit + 1)
            references.append(Reference.read(data, index, max_bytes=limit))
        return await _run(request, parsed, "edit", references)
    except OpenAIError as exc:
        return exc.response()
    except Flux2Error as exc:
        return OpenAIError.of(exc).response()
    finally:
        if form is not None:
            await form.close()


@router.post(
    "/images/generations",
    operation_id="openai_images_generations",
    summary="OpenAI: make images from text (a FLUX.2 text-to-image endpoint)",
    response_class=Response,
    openapi_extra=spec.GENERATIONS_BODY,
    responses=spec.IMAGES_RESPONSES,
)
async def generations(request: Request) -> Response:
    try:
        caller(request)
        try:  # strict: NaN, duplicate keys, deep nesting, bad UTF-8 are refused here
            fields = strict_json.loads(await request.body() or b"null")
        except strict_json.InvalidJson as exc:
            raise OpenAIError(
                400, f"the body is not JSON: {exc.reason}", code="invalid_json"
            ) from None
        if not isinstance(fields, dict):
            raise OpenAIError(400, "the body must be a JSON object", code="invalid_json")
        return await _run(request, ImageRequest.parse(fields), "generate", [])
    except OpenAIError as exc:
        return exc.response()
    except Flux2Error as exc:
        return OpenAIError.of(exc).response()


async def _form(request: Request) -> FormData:
    try:
        return await request.form(
            max_files=MAX_IMAGE_PARTS + 2, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except HTTPException as exc:  # starlette's answer to a malformed or oversized form
        raise OpenAIError(exc.status_code, str(exc.detail), code="invalid_form") from None


async def _run(
    request: Request, parsed: ImageRequest, operation: Operation, references: list[Reference]
) -> Response:
    """Submit the job for ``parsed`` and answer with its outcome (or stream it)."""
    state = _state(request)
    model = find_model(parsed.model, operation, _endpoints(request))
    size = parse_size(parsed.size)
    if size is None and references:
        size = auto_size(references[0].width, references[0].height)
    body = fal_body(parsed, model, references, size)
    job, errors = new_job(request, state.settings, body, model.endpoint)
    if errors:
        raise input_errors(errors)
    job.webhook_url = None  # answered on the connection
    job.previews = parsed.partial_images if parsed.stream else 0
    job.output_compression = parsed.output_compression
    if parsed.safety_identifier or parsed.user:
        logger.info(
            "OpenAI %s for %s", operation, parsed.safety_identifier or parsed.user,
            extra={"request_id": job.id},
        )  # fmt: skip
    await state.jobs.submit(job)
    output = size or _default_size(job)
    tokens = usage(references, output, job.num_images, state.settings.engine.reference_pixels)
    if parsed.stream:
        events = _events(request, job, parsed, model, tokens)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    outcome = await _wait(request, job)
    if outcome is None:
        return OpenAIError(499, "Client disconnected", code="client_cancelled").response()
    if not outcome.ok:
        raise outcome_error(outcome)
    return JSONResponse(images_response(parsed, outcome, int(job.created_at), tokens))


def _default_size(job: Job) -> tuple[int, int]:
    size = job.input.output_size() if job.input is not None else None
    return (size.width, size.height) if size is not None else (1024, 1024)


async def _wait(request: Request, job: Job) -> Outcome | None:
    """The job's outcome; None when the client went away (the job is cancelled then)."""
    jobs: AsyncJobs = _state(request).jobs
    async with jobs.watching(job.id) as watch:
        view: JobView | None = None
        while True:
            view = await watch.next(view, timeout=DISCONNECT_CHECK_SECONDS)
            if view is None:
                raise OpenAIError(500, "the result expired", kind="server_error")
            if view.status is JobStatus.COMPLETED and view.outcome is not None:
                return view.outcome
            if await request.is_disconnected():
                await jobs.cancel(job.id)
                return None


def _event(kind: str, payload: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n"


async def _events(
    request: Request, job: Job, parsed: ImageRequest, model: Model, tokens: dict[str, Any]
) -> AsyncIterator[str]:
    """The stream: a partial image per preview the worker logs, then one completed event per
    image (or an error event). A client that goes away cancels the job."""
    jobs: AsyncJobs = _state(request).jobs
    prefix = "image_edit" if model.operation == "edit" else "image_generation"
    common = {"background": "opaque", "quality": "auto", "output_format": parsed.output_format}
    finished = False
    try:
        async with jobs.watching(job.id) as watch:
            view: JobView | None = None
            read = 0
            while True:
                changed = await watch.next(view, timeout=STREAM_PING_SECONDS)
                if changed is None:
                    yield _event("error", OpenAIError(500, "the result expired").body())
                    finished = True
                    return
                if changed is view:
                    yield ": ping\n\n"
                    continue
                view = changed
                for entry in view.logs[read:]:
                    note = read_note(entry)
                    if note is None:
                        continue
                    preview = await jobs.open_file(note.file_key)
                    yield _event(
                        f"{prefix}.partial_image",
                        {
                            **common,
                            "b64_json": _b64(preview.data),
                            "partial_image_index": note.index,
                            "size": _size_of(preview.data),
                            "created_at": int(time.time()),
                        },
                    )
                read = len(view.logs)
                if view.status is JobStatus.COMPLETED and view.outcome is not None:
                    finished = True
                    if not view.outcome.ok:
                        yield _event("error", outcome_error(view.outcome).body())
                        return
                    for image in output_images(view.outcome):
                        yield _event(
                            f"{prefix}.completed",
                            {
                                **common,
                                "b64_json": b64_of(image),
                                "size": f"{image['width']}x{image['height']}",
                                "created_at": int(time.time()),
                                "usage": tokens,
                            },
                        )
                    return
    finally:
        if not finished:  # the client went away mid-stream
            with suppress(Exception):
                await jobs.cancel(job.id)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _size_of(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return f"{image.width}x{image.height}"
