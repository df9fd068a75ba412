"""One slow image host does not hold back the jobs batched with it.

A real loopback HTTP server answers one image URL only after a delay; the other job's reference
is a data URI. The fast job must run and complete while the slow download is still going, and
the slow job must still complete afterwards, in a batch of its own.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from worker_helpers import all_done, make_job, wait_until

from pipelines.fake import FakeEngine
from service.inputs import FetchPolicy
from service.jobs import JobStatus
from service.queue.memory import InMemoryJobQueue
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions

DELAY = 2.0


@pytest.fixture
def slow_image_url() -> Iterator[str]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
    png = buffer.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            time.sleep(DELAY)
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow.png"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_slow_download_does_not_hold_back_its_batch(tmp_path: Path, slow_image_url: str) -> None:
    queue = InMemoryJobQueue()
    engine = FakeEngine()
    slow = make_job(input={"image_urls": [slow_image_url], "seed": 1})
    fast = make_job(input={"seed": 2})
    queue.submit(slow)  # the older one: it would have defined the batch
    queue.submit(fast)
    worker = Worker(
        lambda: engine,
        queue,
        LocalArtifactStore(tmp_path / "files"),
        options=WorkerOptions(
            warmup=False,
            claim_timeout=0.05,
            batch_window=0.05,
            fetch_policy=FetchPolicy.from_text("127.0.0.1"),
        ),
    )
    worker.start()
    try:
        started = time.monotonic()
        wait_until(all_done(queue, [fast]))
        assert time.monotonic() - started < DELAY  # it did not wait for the slow download
        view = queue.view(slow.id)
        assert view is not None and view.status is JobStatus.IN_PROGRESS  # still downloading
        assert slow.id in worker.held
        wait_until(all_done(queue, [slow]))
    finally:
        worker.stop(timeout=10)
    assert engine.calls == [(fast.id,), (slow.id,)]
    outcome = queue.view(slow.id).outcome  # type: ignore[union-attr]
    assert outcome is not None and outcome.ok
    messages = [e.message for e in queue.view(slow.id).logs]  # type: ignore[union-attr]
    assert "Inputs still downloading: joins the next batch" in messages


def test_a_drain_gives_back_a_job_still_downloading(tmp_path: Path, slow_image_url: str) -> None:
    queue = InMemoryJobQueue()
    slow = make_job(input={"image_urls": [slow_image_url]})
    fast = make_job()
    queue.submit(slow)
    queue.submit(fast)
    worker = Worker(
        FakeEngine,
        queue,
        LocalArtifactStore(tmp_path / "files"),
        options=WorkerOptions(
            warmup=False, claim_timeout=0.05, fetch_policy=FetchPolicy.from_text("127.0.0.1")
        ),
    )
    worker.start()
    wait_until(all_done(queue, [fast]))
    worker.stop(timeout=10)
    view = queue.view(slow.id)
    assert view is not None and view.status is JobStatus.IN_QUEUE  # back, for another worker
    time.sleep(DELAY)  # the download ends after the drain: nothing happens to the job
    view = queue.view(slow.id)
    assert view is not None and view.status is JobStatus.IN_QUEUE
