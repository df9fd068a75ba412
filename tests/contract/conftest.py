"""Contract fixtures: every queue and store backend behind the same fixtures.

``queue_factory`` / ``queue`` run a test once on :class:`InMemoryJobQueue` and once on
:class:`RedisJobQueue`; ``store`` once on :class:`LocalArtifactStore` and once on
:class:`RedisArtifactStore`. Redis is the throw-away ``redis-server`` of ``tests/conftest.py``;
each test gets its own key prefix, so tests never see each other's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.queue.base import JobQueue
from service.storage.base import ArtifactStore

QueueFactory = Callable[..., JobQueue]


@pytest.fixture
def key_prefix() -> str:
    """A fresh Redis key prefix per test (cheaper than FLUSHALL, and parallel-safe)."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def queue_factory(
    backend: str, request: pytest.FixtureRequest, key_prefix: str
) -> Iterator[QueueFactory]:
    """Makes queues of the backend under test. Redis-only options (``consumer``,
    ``lease_seconds``, ``max_deliveries``) are ignored by the in-memory queue; Redis queues of one
    test share one key prefix, i.e. one queue seen by several consumers."""
    made: list[JobQueue] = []
    url = str(request.getfixturevalue("redis_url")) if backend == "redis" else ""

    def make(
        *,
        max_queued: int = 1000,
        result_ttl: float = 3600.0,
        consumer: str = "worker-a",
        lease_seconds: float = 30.0,
        max_deliveries: int = 3,
    ) -> JobQueue:
        queue: JobQueue
        if backend == "memory":
            from service.queue.memory import InMemoryJobQueue

            queue = InMemoryJobQueue(max_queued=max_queued, result_ttl=result_ttl)
        else:
            from service.queue.redis import RedisJobQueue

            queue = RedisJobQueue(
                url,
                consumer=consumer,
                max_queued=max_queued,
                result_ttl=result_ttl,
                lease_seconds=lease_seconds,
                max_deliveries=max_deliveries,
                key_prefix=key_prefix,
            )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


@pytest.fixture
def queue(queue_factory: QueueFactory) -> JobQueue:
    return queue_factory()


@pytest.fixture
def redis_queues(redis_url: str, key_prefix: str) -> Iterator[Callable[..., Any]]:
    """Redis-only: ``RedisJobQueue`` instances sharing one queue (one per consumer name)."""
    from service.queue.redis import RedisJobQueue

    made: list[RedisJobQueue] = []

    def make(consumer: str, **options: Any) -> RedisJobQueue:
        queue = RedisJobQueue(redis_url, consumer=consumer, key_prefix=key_prefix, **options)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()


@pytest.fixture(params=["local", "redis"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str
) -> Iterator[ArtifactStore]:
    if request.param == "local":
        from service.storage.local import LocalArtifactStore

        yield LocalArtifactStore(tmp_path / "files")
        return
    from service.storage.redis import RedisArtifactStore

    redis_store = RedisArtifactStore(
        str(request.getfixturevalue("redis_url")), ttl=60, key_prefix=key_prefix
    )
    yield redis_store
    redis_store.close()
