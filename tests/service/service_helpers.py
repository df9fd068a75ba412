"""Helpers (not fixtures) for the in-process HTTP tests: bodies, the service, an engine gate.

The helpers every test package shares (paths, images, waiting, a webhook receiver) live in
``tests/helpers`` and are re-exported here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from benchmarks.common import free_port
from pipelines.fake import FakeEngine
from service.queue.memory import InMemoryJobQueue
from service.storage.local import LocalArtifactStore
from service.worker import Worker
from tests.helpers.fal import RUN_PATH, SUBMIT_PATH, parse_sse, request_path
from tests.helpers.images import data_uri, png_bytes
from tests.helpers.jobs import edit_input_body
from tests.helpers.waiting import wait_for
from tests.helpers.webhooks import Receiver, webhook_server

__all__ = [  # shared helpers, re-exported for the tests of this package
    "RUN_PATH",
    "SUBMIT_PATH",
    "EngineGate",
    "MakeService",
    "Receiver",
    "Service",
    "data_uri",
    "edit_body",
    "free_port",
    "parse_sse",
    "png_bytes",
    "request_path",
    "step_messages",
    "wait_for",
    "webhook_server",
]

LOG_KEYS = {"message", "level", "source", "timestamp"}
STATUS_ORDER = {"IN_QUEUE": 0, "IN_PROGRESS": 1, "COMPLETED": 2}


def edit_body(**overrides: Any) -> dict[str, Any]:
    """A small valid input: one 64x64 PNG reference, a 512x512 output, seed 7."""
    return edit_input_body(**{"seed": 7, **overrides})


class EngineGate:
    """An engine factory: blocks until ``open()`` (the worker stays ``starting`` and claims
    nothing), then makes a :class:`FakeEngine`, remembered in ``engines``."""

    def __init__(self, *, closed: bool = False, **engine_options: Any) -> None:
        self.event = threading.Event()
        if not closed:
            self.event.set()
        self.engine_options = engine_options
        self.engines: list[FakeEngine] = []

    def open(self) -> None:
        self.event.set()

    def __call__(self) -> FakeEngine:
        if not self.event.wait(30):
            raise RuntimeError("engine gate never opened")
        engine = FakeEngine(**self.engine_options)
        self.engines.append(engine)
        return engine

    @property
    def engine(self) -> FakeEngine:
        assert self.engines, "the engine was not made yet"
        return self.engines[-1]


@dataclass
class Service:
    """An app with an embedded worker, running (lifespan entered) behind ``client``."""

    client: TestClient
    queue: InMemoryJobQueue
    store: LocalArtifactStore
    worker: Worker
    files: Path
    gate: EngineGate | None

    # -- fal calls -----------------------------------------------------------------------------

    def submit(self, body: dict[str, Any] | None = None, **kwargs: Any) -> str:
        response = self.client.post(
            SUBMIT_PATH, json=edit_body() if body is None else body, **kwargs
        )
        assert response.status_code == 200, response.text
        return str(response.json()["request_id"])

    def status(
        self, request_id: str, *, logs: str | None = None, subpath: bool = False
    ) -> httpx.Response:
        params = {} if logs is None else {"logs": logs}
        return self.client.get(request_path(request_id, "/status", subpath=subpath), params=params)

    def wait_status(
        self,
        request_id: str,
        want: str = "COMPLETED",
        *,
        logs: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            body: dict[str, Any] = self.status(request_id, logs=logs).json()
            return body if body.get("status") == want else None

        return wait_for(check, timeout, f"status {want} of {request_id}")

    def result(self, request_id: str, *, subpath: bool = False) -> httpx.Response:
        return self.client.get(request_path(request_id, subpath=subpath))

    def cancel(self, request_id: str, *, subpath: bool = False) -> httpx.Response:
        return self.client.put(request_path(request_id, "/cancel", subpath=subpath))

    def logs(self, request_id: str) -> list[dict[str, Any]]:
        return list(self.status(request_id, logs="1").json()["logs"] or [])


def step_messages(logs: list[dict[str, Any]]) -> list[str]:
    return [entry["message"] for entry in logs if entry["message"].startswith("step ")]


MakeService = Callable[..., Service]
