"""Helpers (not fixtures) to drive the worker in-process: fake engine, in-memory queue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.jobs import Job, JobStatus
from service.queue.memory import InMemoryJobQueue
from tests.helpers.images import png_data_uri as data_uri
from tests.helpers.jobs import make_job

__all__ = [
    "all_done",
    "data_uri",
    "make_job",
    "wait_until",
    "webhook_receiver",
]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def all_done(queue: InMemoryJobQueue, jobs: list[Job]) -> Callable[[], bool]:
    def check() -> bool:
        views = [queue.view(job.id) for job in jobs]
        return all(v is not None and v.status is JobStatus.COMPLETED for v in views)

    return check


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server recording the JSON body of every POST: (its URL, the bodies)."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
