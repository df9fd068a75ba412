"""A job whose stored record cannot be read back fails cleanly; the worker goes on.

Jobs cross Redis as JSON and are parsed back into their endpoint's typed input when a worker
claims them. A record written by another version (or tampered with) must not break the worker
or the jobs queued behind it: an unreadable *input* fails its job with a 500 (webhook sent, the
envelope is fine); an unreadable *record* is failed by the queue itself (no webhook: nothing in
it can be trusted). Real ``redis-server`` (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from worker_helpers import all_done, make_job, wait_until, webhook_receiver

from pipelines.fake import FakeEngine
from service.guard import webhook_policy
from service.jobs import Job, JobStatus
from service.queue.memory import InMemoryJobQueue
from service.queue.redis import RedisJobQueue
from service.storage.local import LocalArtifactStore
from service.webhooks import WebhookSender
from service.worker import Worker, WorkerOptions


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
def sender() -> Iterator[WebhookSender]:
    webhooks = WebhookSender(
        attempts=3, backoff=0.05, timeout=5, policy=webhook_policy("127.0.0.1")
    )
    yield webhooks
    webhooks.close()


def start(queue: Any, tmp_path: Path, sender: WebhookSender) -> Worker:
    worker = Worker(
        FakeEngine,
        queue,
        LocalArtifactStore(tmp_path / "files"),
        webhooks=sender,
        options=WorkerOptions(warmup=False, claim_timeout=0.05),
    )
    worker.start()
    return worker


def test_a_redis_job_with_an_unreadable_input_fails_cleanly(
    redis_url: str, tmp_path: Path, hook: tuple[str, list[dict[str, Any]]], sender: WebhookSender
) -> None:
    url, received = hook
    prefix = f"unreadable-{uuid.uuid4().hex[:8]}:"
    queue = RedisJobQueue(redis_url, consumer="worker", key_prefix=prefix)
    broken, fine = make_job(webhook_url=url), make_job()
    queue.submit(broken)
    queue.submit(fine)
    # Another version wrote it: the prompt is a number now, and a field the schema lacks.
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        record = json.loads(client.hget(f"{prefix}req:{broken.id}", "job"))  # type: ignore[arg-type]
        record["input"]["prompt"] = 42
        client.hset(f"{prefix}req:{broken.id}", "job", json.dumps(record))
    worker = start(queue, tmp_path, sender)
    try:
        wait_until(all_done(queue, [broken, fine]))  # type: ignore[arg-type]
        wait_until(lambda: len(received) == 1)
        assert worker.state.serving
        failed, done = queue.view(broken.id), queue.view(fine.id)
    finally:
        worker.stop(timeout=10)
        queue.close()
    assert failed is not None and failed.outcome is not None
    assert (failed.outcome.status_code, failed.outcome.error_type) == (500, "internal_server_error")
    assert "prompt" in (failed.outcome.error or "")
    assert done is not None and done.outcome is not None and done.outcome.ok
    [body] = received
    assert (body["request_id"], body["status"]) == (broken.id, "ERROR")


def test_a_redis_record_that_is_not_json_is_failed_by_the_queue(
    redis_url: str, tmp_path: Path, sender: WebhookSender
) -> None:
    prefix = f"garbage-{uuid.uuid4().hex[:8]}:"
    queue = RedisJobQueue(redis_url, consumer="worker", key_prefix=prefix)
    broken, fine = make_job(), make_job()
    queue.submit(broken)
    queue.submit(fine)
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        client.hset(f"{prefix}req:{broken.id}", "job", "{not json")
    worker = start(queue, tmp_path, sender)
    try:
        wait_until(all_done(queue, [broken, fine]))  # type: ignore[arg-type]
        assert worker.state.serving
        failed, done = queue.view(broken.id), queue.view(fine.id)
    finally:
        worker.stop(timeout=10)
        queue.close()
    assert failed is not None and failed.status is JobStatus.COMPLETED
    assert failed.outcome is not None and failed.outcome.status_code == 500
    assert "could not be read" in (failed.outcome.error or "")
    assert done is not None and done.outcome is not None and done.outcome.ok


def test_a_job_without_an_input_fails_in_the_worker(tmp_path: Path, sender: WebhookSender) -> None:
    queue = InMemoryJobQueue()
    broken = Job(id="no-input", input=None, base_url="http://test", input_error="unreadable")
    fine = make_job()
    queue.submit(broken)
    queue.submit(fine)
    worker = start(queue, tmp_path, sender)
    try:
        wait_until(all_done(queue, [broken, fine]))
    finally:
        worker.stop(timeout=10)
    failed = queue.view(broken.id)
    assert failed is not None and failed.outcome is not None
    assert (failed.outcome.status_code, failed.outcome.error) == (500, "unreadable")
    assert queue.view(fine.id).outcome.ok  # type: ignore[union-attr]


def test_a_stored_input_round_trips_into_the_same_type() -> None:
    job = make_job(input={"num_images": 3, "image_size": {"width": 640, "height": 768}})
    again = Job.from_json(json.loads(json.dumps(job.to_json())))
    assert again == job
    assert type(again.input) is type(job.input)
    assert again.input_error is None
