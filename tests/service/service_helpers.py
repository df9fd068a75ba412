"""Helpers (not fixtures) for the in-process HTTP tests: paths, bodies, images, waiting, servers."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image
from starlette.testclient import TestClient

from pipelines.fake import FakeEngine
from service.queue.memory import InMemoryJobQueue
from service.schema import APP_ID, ENDPOINT_ID
from service.storage.local import LocalArtifactStore
from service.worker import Worker

T = TypeVar("T")

RUN_PATH = f"/{ENDPOINT_ID}"  # sync run
SUBMIT_PATH = f"/queue/{ENDPOINT_ID}"  # queue submit
LOG_KEYS = {"message", "level", "source", "timestamp"}
STATUS_ORDER = {"IN_QUEUE": 0, "IN_PROGRESS": 1, "COMPLETED": 2}


def request_path(request_id: str, suffix: str = "", *, subpath: bool = False) -> str:
    """``/queue/fal-ai/flux-2/requests/<id><suffix>`` (or the ``flash/edit`` sub-path form)."""
    prefix = ENDPOINT_ID if subpath else APP_ID
    return f"/queue/{prefix}/requests/{request_id}{suffix}"


def png_bytes(
    width: int = 64, height: int = 64, colour: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes | None = None, media_type: str = "image/png") -> str:
    payload = png_bytes() if data is None else data
    return f"data:{media_type};base64,{base64.b64encode(payload).decode()}"


def edit_body(**overrides: Any) -> dict[str, Any]:
    """A small valid input: one 64x64 PNG reference, a 512x512 output, a fixed seed."""
    body: dict[str, Any] = {
        "prompt": "make it #FF5733",
        "image_urls": [data_uri()],
        "image_size": "square",
        "seed": 7,
    }
    body.update(overrides)
    return body


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.01,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s (last: {value!r})")
        time.sleep(interval)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The JSON of every ``data:`` event in a ``text/event-stream`` body."""
    events = []
    for block in text.split("\n\n"):
        data = [
            line[len("data:") :].strip() for line in block.splitlines() if line.startswith("data:")
        ]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


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


# -- a webhook receiver ---------------------------------------------------------------------------


@dataclass
class Receiver:
    """What a test HTTP server received; answers with ``codes`` in turn, then 200."""

    url: str
    codes: list[int] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.bodies)


@contextmanager
def webhook_server(codes: list[int] | None = None) -> Iterator[Receiver]:
    """A real ``http.server`` on 127.0.0.1 in a thread, recording every POST."""
    receiver = Receiver(url="", codes=list(codes or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            with receiver.lock:
                receiver.bodies.append(json.loads(raw))
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                code = receiver.codes.pop(0) if receiver.codes else 200
            self.send_response(code)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


MakeService = Callable[..., Service]
