"""Helpers (not fixtures) for the load-test tests: a scriptable fal-like stub server, synthetic
samples and the ``flux2-edit loadtest`` command in a subprocess."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import flux2_edit_command
from service.loadtest.sample import Outcome, Phase, Sample

OUTPUT = {
    "images": [
        {
            "url": "http://stub/files/a.png",
            "content_type": "image/png",
            "file_size": 1234,
            "width": 512,
            "height": 512,
        }
    ],
    "timings": {"inference": 0.25},
    "seed": 1,
    "has_nsfw_concepts": [False],
    "prompt": "stub",
}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: OUTPUT)
    headers: dict[str, str] = field(default_factory=lambda: {"x-fal-request-id": "stub"})
    hold: bool = False  # wait for StubServer.release before answering


class StubServer:
    """Answers fal sync runs (``POST /<endpoint>``) from a script of replies, then with
    :data:`OUTPUT`; counts what it served and what it holds."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.served = 0
        self.holding = 0
        self.paths: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.origin = ""

    def _next(self, path: str) -> Reply:
        with self._lock:
            self.paths.append(path)
            return self.script.popleft() if self.script else Reply()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = stub._next(self.path)
                if reply.hold:
                    with stub._lock:
                        stub.holding += 1
                    stub.release.wait(30)
                body = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in {**reply.headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with stub._lock:
                    stub.served += 1

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        return Handler


@contextmanager
def running_stub(certs: Path | None = None) -> Iterator[StubServer]:
    """The stub on a free port; over https with ``certs`` (from ``flux2-edit cert``)."""
    stub = StubServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), stub.handler())
    server.daemon_threads = True
    scheme = "http"
    if certs is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    stub.origin = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.release.set()
        server.shutdown()
        server.server_close()


def sample(
    index: int,
    latency: float | None,
    *,
    outcome: Outcome = Outcome.OK,
    phase: Phase = Phase.MEASURED,
    start: float = 0.0,
    **extra: Any,
) -> Sample:
    """A synthetic sample: ``latency`` seconds from ``start``."""
    fields: dict[str, Any] = {"images": 1 if outcome is Outcome.OK else 0, **extra}
    return Sample(
        index=index,
        phase=phase,
        outcome=outcome,
        mix="edit-1ref",
        endpoint="fal-ai/flux-2/flash/edit",
        start_s=start,
        end_s=None if latency is None else start + latency,
        latency_s=latency,
        **fields,
    )


def loadtest(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``flux2-edit loadtest ARGS`` in a subprocess (this checkout's code), output captured."""
    return subprocess.run(
        [*flux2_edit_command(), "loadtest", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_result(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
