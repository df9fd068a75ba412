"""Helpers (not fixtures) for the security tests: hostile files, HTTP servers, an in-process app."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from starlette.testclient import TestClient

from pipelines.fake import FakeEngine
from service.bootstrap import build_app
from service.inputs import FetchPolicy
from service.jobs import JobStatus
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.storage.local import LocalArtifactStore
from service.worker import Worker
from tests.helpers.fal import RUN_PATH, SUBMIT_PATH, request_path
from tests.helpers.images import data_uri
from tests.helpers.services import fake_components

__all__ = [  # shared helpers, re-exported for the tests of this package
    "RUN_PATH",
    "SUBMIT_PATH",
    "data_uri",
    "request_path",
]


# -- files ------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(width: int, height: int) -> bytes:
    """A tiny hand-made PNG whose IHDR claims ``width x height`` 8-bit greyscale pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def _gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(x * 2 % 256, y * 3 % 256, (x + y) % 256) for y in range(height) for x in range(width)]
    )
    return image


PNG = encode(_gradient(96, 80), "PNG")
PNG_URI = data_uri(PNG)
TRUNCATED_PNG = PNG[: len(PNG) // 2]
BOMB_PNG = png_header(30000, 30000)
TINY_PNG = encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG")
ANIMATED_GIF = encode(
    Image.new("RGB", (96, 80), (255, 0, 0)),
    "GIF",
    save_all=True,
    append_images=[Image.new("RGB", (96, 80), (0, 0, 255))],
    duration=100,
)
BMP = encode(_gradient(96, 80), "BMP")
HTML = b"<!doctype html><html><body><h1>Welcome</h1></body></html>"


# -- HTTP servers -----------------------------------------------------------------------------


Route = Callable[[BaseHTTPRequestHandler], None]


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


class _Handler(BaseHTTPRequestHandler):
    server: HttpServer

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.hits.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            send(self, 404, b"no such file", Content_Type="text/plain")
        else:
            route(self)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


class HttpServer(ThreadingHTTPServer):
    """A threaded HTTP server on ``host``; ``hits`` records every path requested."""

    def __init__(self, host: str, routes: dict[str, Route] | None = None) -> None:
        super().__init__((host, 0), _Handler)
        self.routes: dict[str, Route] = routes or {}
        self.hits: list[str] = []
        self.lock = threading.Lock()
        self.base = f"http://{host}:{self.server_address[1]}"
        self.port = int(self.server_address[1])
        self._thread = threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def hostile_routes(private_base: str) -> dict[str, Route]:
    """What the allowed (127.0.0.2) server serves: good, bad and redirecting files."""
    return {
        "/ok.png": lambda h: send(h, 200, PNG, Content_Type="image/png"),
        "/page.html": lambda h: send(h, 200, HTML, Content_Type="text/html"),
        "/truncated.png": lambda h: send(h, 200, TRUNCATED_PNG, Content_Type="image/png"),
        "/bomb.png": lambda h: send(h, 200, BOMB_PNG, Content_Type="image/png"),
        "/tiny.png": lambda h: send(h, 200, TINY_PNG, Content_Type="image/png"),
        "/anim.gif": lambda h: send(h, 200, ANIMATED_GIF, Content_Type="image/gif"),
        "/image.bmp": lambda h: send(h, 200, BMP, Content_Type="image/bmp"),
        "/boom": lambda h: send(h, 500, b"oops", Content_Type="text/plain"),
        "/to-private": lambda h: send(h, 302, b"", Location=f"{private_base}/ok.png"),
        "/to-metadata": lambda h: send(
            h, 302, b"", Location="http://169.254.169.254/latest/meta-data/"
        ),
        "/to-localhost": lambda h: send(
            h, 307, b"", Location=private_base.replace("127.0.0.1", "localhost") + "/ok.png"
        ),
    }


@dataclass(frozen=True)
class Servers:
    private: HttpServer  # on 127.0.0.1: internal, must never be contacted
    allowed: HttpServer  # on 127.0.0.2: the operator's allowed on-prem store


# -- the app ----------------------------------------------------------------------------------


@dataclass
class Service:
    """An in-process app with the fake engine, an in-memory queue and a local file store."""

    client: TestClient
    queue: InMemoryJobQueue
    store: LocalArtifactStore
    worker: Worker
    files: Path
    jobs: dict[str, bool] = field(default_factory=dict)  # job id -> succeeded

    def record(self, job_id: str | None) -> None:
        """Remember a job (if ``job_id`` names one) once it has completed."""
        if job_id is None or self.queue.view(job_id) is None:
            return
        view = wait_completed(self.queue, job_id)
        assert view.outcome is not None
        self.jobs[job_id] = view.outcome.ok


def make_service(
    root: Path,
    *,
    fetch_policy: FetchPolicy,
    engine: Callable[[], FakeEngine] = FakeEngine,
    **settings: Any,
) -> tuple[Service, Settings]:
    queue = InMemoryJobQueue()
    parts = fake_components(
        root, engine=engine, queue=queue, options={"fetch_policy": fetch_policy}, **settings
    )
    assert parts.worker is not None
    service = Service(
        client=TestClient(build_app(parts)),
        queue=queue,
        store=parts.store,  # type: ignore[arg-type]
        worker=parts.worker,
        files=parts.settings.storage.files_root,
    )
    return service, parts.settings


def wait_completed(queue: InMemoryJobQueue, job_id: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        view = queue.view(job_id)
        if view is not None and view.status is JobStatus.COMPLETED:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not complete: {view}")
        time.sleep(0.01)


def assert_fal_problems(response: httpx.Response, status: int, type_: str, loc: list[Any]) -> None:
    """fal's 422 shape, with a problem of ``type_`` at ``loc`` (or below it)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], list), body
    assert body["detail"], body
    for problem in body["detail"]:
        assert isinstance(problem["loc"], list)
        assert isinstance(problem["msg"], str)
        assert problem["msg"]
        assert problem["url"] == f"https://docs.fal.ai/errors/#{problem['type']}"
        assert set(problem) <= {"loc", "msg", "type", "url", "ctx", "input"}
    found = [(p["type"], p["loc"][: len(loc)]) for p in body["detail"]]
    assert (type_, loc) in found, body
