"""A job whose worker keeps dying is failed by another worker's reaper, and its webhook sent.

Real ``redis-server`` (``tests/conftest.py``): a "dead" consumer claims the job and never renews
its lease; a live worker's housekeeping reaps it as a dead letter and sends the webhook.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import make_job, wait_until, webhook_receiver

from pipelines.fake import FakeEngine
from service.guard import webhook_policy
from service.jobs import JobStatus
from service.queue.redis import RedisJobQueue
from service.storage.local import LocalArtifactStore
from service.webhooks import WebhookSender
from service.worker import Worker, WorkerOptions


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    with webhook_receiver() as receiver:
        yield receiver


def test_a_dead_lettered_job_gets_its_webhook(
    redis_url: str, tmp_path: Path, hook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = hook
    prefix = f"dead-letters-{uuid.uuid4().hex[:8]}:"

    def consumer(name: str) -> RedisJobQueue:  # one queue, two workers; a lost lease is final
        return RedisJobQueue(
            redis_url, consumer=name, lease_seconds=0.3, max_deliveries=1, key_prefix=prefix
        )

    dead, live = consumer("dead-worker"), consumer("live-worker")
    sender = WebhookSender(attempts=3, backoff=0.05, timeout=5, policy=webhook_policy("127.0.0.1"))
    job = make_job(webhook_url=url)
    dead.submit(job)
    assert [j.id for j in dead.claim(1, 1.0)] == [job.id]  # ... and it never renews the lease
    worker = Worker(
        FakeEngine,
        live,
        LocalArtifactStore(tmp_path / "files"),
        webhooks=sender,
        options=WorkerOptions(warmup=False, claim_timeout=0.05, reap_every=0.1),
    )
    worker.start()
    try:
        wait_until(lambda: len(received) == 1)
        time.sleep(0.3)  # and only one
        assert len(received) == 1
        view = live.view(job.id)
        assert view is not None and view.status is JobStatus.COMPLETED
        assert view.outcome is not None and view.outcome.status_code == 500
    finally:
        worker.stop(timeout=10)
        sender.close()
        dead.close()
        live.close()
    [body] = received
    assert body["request_id"] == job.id
    assert body["status"] == "ERROR"
    assert body["payload"]["error_type"] == "runner_disconnected"
