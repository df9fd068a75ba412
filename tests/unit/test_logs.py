"""Structured logs: JSON lines that carry the request id, in HTTP requests and in the worker."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from pipelines.fake import FakeEngine
from service.app import create_app
from service.jobs import JobStatus
from service.logs import (
    adopt_request_id,
    current_request_id,
    request_context,
    setup_logging,
)
from service.queue.memory import InMemoryJobQueue
from service.schema import ENDPOINT_ID
from service.settings import Settings
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions


def _body() -> dict[str, Any]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {"prompt": "make it #FF5733", "image_urls": [uri], "image_size": "square", "seed": 3}


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Root logging into a buffer for the test, restored afterwards."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    handler = setup_logging("info", json=True, stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_json_lines_have_the_fields_and_extras(stream: io.StringIO) -> None:
    log = logging.getLogger("flux2.test")
    log.info("hello %s", "world", extra={"steps": 8, "path": Path("/x")})
    with request_context("req-1"):
        log.warning("inside")
        adopt_request_id("job-9")
        log.error("adopted")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, inside, adopted, failed = lines(stream)
    assert first["message"] == "hello world"
    assert first["level"] == "INFO"
    assert first["logger"] == "flux2.test"
    assert first["ts"].endswith("Z")
    assert (first["steps"], first["path"]) == (8, "/x")
    assert "request_id" not in first
    assert (inside["request_id"], adopted["request_id"]) == ("req-1", "job-9")
    assert "request_id" not in failed
    assert "ValueError: boom" in failed["exc_info"]
    assert current_request_id() is None


def test_an_explicit_request_id_wins(stream: io.StringIO) -> None:
    with request_context("outer"):
        logging.getLogger("flux2.test").info("given", extra={"request_id": "mine"})
    assert lines(stream)[0]["request_id"] == "mine"


def test_contexts_do_not_leak_between_threads(stream: io.StringIO) -> None:
    seen: list[str | None] = []
    with request_context("main"):
        thread = threading.Thread(target=lambda: seen.append(current_request_id()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_text_format_shows_the_id() -> None:
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    first = setup_logging(logging.INFO, stream=buffer)
    second = setup_logging(logging.INFO, stream=buffer)  # replaces the first, does not add
    try:
        assert first not in root.handlers
        with request_context("abc"):
            logging.getLogger("flux2.test").info("hi", extra={"steps": 2})
        assert buffer.getvalue().count("\n") == 1
        assert buffer.getvalue().rstrip().endswith("INFO flux2.test [abc]: hi steps=2")
    finally:
        root.removeHandler(second)
        root.setLevel(level)


def _service(tmp_path: Path) -> tuple[TestClient, InMemoryJobQueue]:
    settings = Settings(cache_dir=tmp_path, files_dir=tmp_path / "files")
    queue = InMemoryJobQueue()
    store = LocalArtifactStore(settings.storage.files_root)
    worker = Worker(
        lambda: FakeEngine(num_steps=2),
        queue,
        store,
        options=WorkerOptions(warmup=False, claim_timeout=0.05, batch_window=0.0),
    )
    app = create_app(settings, queue=queue, store=store, worker=worker)
    return TestClient(app), queue


def _completed(queue: InMemoryJobQueue, job_id: str) -> bool:
    view = queue.view(job_id)
    return view is not None and view.status is JobStatus.COMPLETED


def test_http_and_worker_lines_carry_the_request_id(tmp_path: Path, stream: io.StringIO) -> None:
    client, queue = _service(tmp_path)
    with client:
        submitted = client.post(f"/queue/{ENDPOINT_ID}", json=_body())
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["request_id"]
        assert submitted.headers["x-fal-request-id"] == job_id
        deadline = time.monotonic() + 10
        while not _completed(queue, job_id):
            assert time.monotonic() < deadline, "the job did not complete"
            time.sleep(0.01)
        unknown = client.get("/no/such/path")
        client.get("/health")  # a successful probe: DEBUG, not in an INFO log
    records = lines(stream)
    access = [r for r in records if r["logger"] == "service.access"]
    submit_line = next(r for r in access if r["route"] == f"/queue/{ENDPOINT_ID}")
    assert submit_line["request_id"] == job_id  # the job's id, adopted from the response
    assert submit_line["status"] == 200
    unknown_line = next(r for r in access if r["route"] == "other")
    assert unknown_line["status"] == 404
    assert unknown_line["request_id"] == unknown.headers["x-fal-request-id"]  # a fresh one
    assert not [r for r in access if r["route"] == "/health"]
    finished = [r for r in records if r["message"].startswith("job finished")]
    assert [(r["logger"], r["request_id"]) for r in finished] == [
        ("service.worker.finishing", job_id)
    ]
