"""The queue's change feed and worker registry, on every backend; and waiting on it without polls.

``JobQueue.watch`` tells listeners the id of every job that changed (and ``@queue`` when queue
positions moved); on Redis one node sees the changes another made. ``AsyncJobs`` fans them out to
waiting clients, which read their job again only when told: idle waiters cost the queue nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from service.job_access import AsyncJobs
from service.jobs import JobStatus, LogEntry, Outcome, WorkerInfo
from service.queue.base import QUEUE_MOVED, RESYNC, JobQueue
from service.storage.local import LocalArtifactStore
from tests.helpers.jobs import make_job
from tests.helpers.waiting import wait_for

QueueFactory = Callable[..., JobQueue]
OK = Outcome(status_code=200, body={"images": []}, inference_time=0.1)


@pytest.fixture
def nodes(queue_factory: QueueFactory, backend: str) -> tuple[JobQueue, JobQueue]:
    """An API node's queue and a worker's: one object in memory, two Redis clients on Redis."""
    api = queue_factory(consumer="api")
    return api, api if backend == "memory" else queue_factory(consumer="worker")


class Heard:
    """A listener recording what it was told, thread-safe."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, key: str) -> None:
        with self._lock:
            self.keys.append(key)

    def saw(self, *keys: str) -> bool:
        with self._lock:
            return all(key in self.keys for key in keys)

    def clear(self) -> None:
        with self._lock:
            self.keys.clear()


def test_every_change_is_told_to_the_listeners(
    nodes: tuple[JobQueue, JobQueue], backend: str
) -> None:
    observer, worker = nodes
    heard = Heard()
    stop = observer.watch(heard)
    if backend == "redis":
        wait_for(lambda: heard.saw(RESYNC), what="the feed subscribed")
    job = make_job("feed-1")
    worker.submit(job)
    wait_for(lambda: heard.saw("feed-1", QUEUE_MOVED), what="submit")
    heard.clear()
    [claimed] = worker.claim(1, 1.0)
    assert claimed.id == "feed-1"
    wait_for(lambda: heard.saw("feed-1", QUEUE_MOVED), what="claim")
    heard.clear()
    worker.log("feed-1", LogEntry("step 1/8"))
    wait_for(lambda: heard.saw("feed-1"), what="a log line")
    heard.clear()
    worker.complete("feed-1", OK)
    wait_for(lambda: heard.saw("feed-1"), what="completion")
    stop()
    heard.clear()
    worker.submit(make_job("feed-2"))
    time.sleep(0.3)
    assert "feed-2" not in heard.keys  # stopped listening


def test_a_cancel_of_a_queued_job_is_told(queue_factory: QueueFactory) -> None:
    queue = queue_factory()
    heard = Heard()
    queue.watch(heard)
    queue.submit(make_job("to-cancel"))
    wait_for(lambda: heard.saw("to-cancel"), what="submit")
    heard.clear()
    queue.cancel("to-cancel")
    wait_for(lambda: heard.saw("to-cancel", QUEUE_MOVED), what="cancel")


def test_workers_announce_themselves_and_lapse(nodes: tuple[JobQueue, JobQueue]) -> None:
    api, worker = nodes
    assert api.live_workers() == []
    worker.announce(WorkerInfo("gpu-a", "starting", model="tiny", pid=7), ttl=30)
    worker.announce(WorkerInfo("gpu-b", "ready", model="tiny"), ttl=30)
    worker.announce(WorkerInfo("gpu-c", "ready", seen_at=time.time() - 100), ttl=30)  # lapsed
    live = api.live_workers()
    assert [(w.name, w.state, w.model) for w in live] == [
        ("gpu-a", "starting", "tiny"),
        ("gpu-b", "ready", "tiny"),
    ]
    assert live[0].pid == 7
    worker.announce(WorkerInfo("gpu-a", "ready", model="tiny"), ttl=30)
    worker.withdraw("gpu-b")
    assert [(w.name, w.state) for w in api.live_workers()] == [("gpu-a", "ready")]


def test_the_oldest_queued_jobs_age(queue_factory: QueueFactory) -> None:
    queue = queue_factory()
    assert queue.oldest_queued_age() is None
    queue.submit(make_job("old", created_at=time.time() - 42))
    queue.submit(make_job("new"))
    age = queue.oldest_queued_age()
    assert age is not None and 41 <= age <= 60
    queue.claim(1, 1.0)
    age = queue.oldest_queued_age()
    assert age is not None and age < 10


# -- waiting clients ---------------------------------------------------------------------------


class CountingQueue:
    """Counts ``view`` calls of the queue under test (what a waiting client costs it)."""

    def __init__(self, inner: JobQueue) -> None:
        self.inner = inner
        self.views = 0

    def view(self, job_id: str) -> object:
        self.views += 1
        return self.inner.view(job_id)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_waiting_clients_read_their_job_only_when_it_changes(
    nodes: tuple[JobQueue, JobQueue],
    tmp_path: object,
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    api, worker = nodes

    def subscribed() -> bool:
        """Whether the API node's change feed has subscribed (always, in memory)."""
        if backend == "memory":
            return True
        import redis

        with redis.Redis.from_url(str(request.getfixturevalue("redis_url"))) as client:
            return bool(client.pubsub_numsub(api.channel)[0][1] >= 1)  # type: ignore[attr-defined]

    counting = CountingQueue(api)
    jobs = AsyncJobs(counting, LocalArtifactStore(tmp_path))  # type: ignore[arg-type]
    ids = [f"wait-{n}" for n in range(20)]
    for job_id in ids:
        worker.submit(make_job(job_id))

    async def scenario() -> None:
        async def wait_until_done(job_id: str) -> float:
            async with jobs.watching(job_id) as watch:
                view = await watch.next(None, timeout=10)
                while view is not None and view.status is not JobStatus.COMPLETED:
                    view = await watch.next(view, timeout=10)
            return time.monotonic()

        waiters = [asyncio.create_task(wait_until_done(job_id)) for job_id in ids]
        # Settle: every waiter read its job, the feed subscribed (its RESYNC: one read more).
        deadline = time.monotonic() + 30
        while True:
            before = counting.views
            await asyncio.sleep(0.5)
            if (
                jobs.waiting == len(ids)
                and counting.views >= len(ids)
                and counting.views == before
                and subscribed()
            ):
                break
            assert time.monotonic() < deadline, "the waiters never settled"
        before = counting.views
        await asyncio.sleep(1.5)  # nothing changes: nobody reads
        assert counting.views == before
        for job_id in ids:  # a worker finishes them all, without claiming (no queue moves)
            worker.cancel(job_id)
        done_at = await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
        assert max(done_at) - min(done_at) < 5
        assert counting.views - before <= 4 * len(ids)  # a few reads each, not a poll loop

    asyncio.run(scenario())
    jobs.close()


@pytest.mark.parametrize("idle", [1.0])
def test_idle_waiters_cost_redis_nothing(redis_url: str, key_prefix: str, idle: float) -> None:
    """100 clients waiting on jobs that do not change: Redis serves (almost) no commands."""
    import redis

    from service.queue.redis import RedisJobQueue

    queue = RedisJobQueue(redis_url, consumer="api", key_prefix=key_prefix)
    counting = CountingQueue(queue)
    jobs = AsyncJobs(counting, LocalArtifactStore("/nonexistent"))  # type: ignore[arg-type]
    ids = [f"idle-{n}" for n in range(100)]
    for job_id in ids:
        queue.submit(make_job(job_id))
    client = redis.Redis.from_url(redis_url)

    def processed() -> int:
        return int(client.info("stats")["total_commands_processed"])

    first_reads = 0

    async def settled() -> None:
        """Every waiter read its job, the feed subscribed (its RESYNC makes them read again),
        and the reads stopped: what follows is the idle state."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            subscribed = client.pubsub_numsub(queue.channel)[0][1] >= 1
            before = counting.views
            await asyncio.sleep(0.5)
            if subscribed and first_reads == len(ids) and counting.views == before:
                return
        raise AssertionError("the waiters never settled")

    async def scenario() -> int:
        stop = asyncio.Event()

        async def wait(job_id: str) -> None:
            nonlocal first_reads
            async with jobs.watching(job_id) as watch:
                view = await watch.next(None, timeout=10)
                first_reads += 1
                while not stop.is_set():
                    view = await watch.next(view, timeout=0.2)

        waiters = [asyncio.create_task(wait(job_id)) for job_id in ids]
        await settled()
        start = processed()
        await asyncio.sleep(idle)
        commands = processed() - start - 2  # the two INFO calls themselves
        stop.set()
        await asyncio.gather(*waiters)
        return commands

    try:
        commands = asyncio.run(scenario())
    finally:
        jobs.close()
        queue.close()
        client.close()
    assert commands <= 10, f"{commands} Redis commands in {idle} s with 100 idle waiters"
