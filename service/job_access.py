"""The queue and the store as the async routes use them: off the event loop, and woken by changes.

Every queue or store call runs on a bounded thread pool, so a slow or absent backend (Redis across
a network) never blocks the event loop that serves every other client.

Waiting is event-driven. The app subscribes once to the queue's change feed
(:meth:`JobQueue.watch`: in-process notifications, or one Redis pub/sub subscription per node)
and fans each change out to the local waiters of that job. A waiter reads its job again only when
told it changed (or queue positions moved while it is queued), so a thousand clients waiting on
jobs that do not change cost nothing. A slow safety read (``resync_seconds``) covers a lost
notification; after the feed reconnects every waiter reads once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import TypeVar

import anyio

from service.jobs import CancelResult, Job, JobStatus, JobView, Outcome, WorkerInfo
from service.queue.base import QUEUE_MOVED, RESYNC, JobQueue
from service.storage.base import Artifact, ArtifactStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Queue and store calls in flight at once from one app (each holds a pool thread).
MAX_THREADS = 32
#: A waiter with no news reads its job again after this long anyway (a lost notification).
RESYNC_SECONDS = 30.0


def change_key(view: JobView) -> tuple[object, ...]:
    """What makes two views of a job differ for a waiting client."""
    return (view.status, view.queue_position, len(view.logs), view.outcome is not None)


class JobWatch:
    """One client waiting on one job; made by :meth:`AsyncJobs.watching`."""

    def __init__(self, jobs: AsyncJobs, job_id: str, resync_seconds: float) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.resync_seconds = resync_seconds
        self._event = asyncio.Event()
        self._queued = True  # until a read says otherwise, queue moves may concern it

    def poke(self, key: str) -> None:
        """A change that may concern this job (on the event loop)."""
        if key == QUEUE_MOVED and not self._queued:
            return  # positions moved, but this job is not waiting in the queue
        self._event.set()

    async def next(self, seen: JobView | None, *, timeout: float) -> JobView | None:
        """The job's view once it differs from ``seen`` (at once when ``seen`` is None); ``seen``
        itself when ``timeout`` passes with no change; None when the job is gone (expired)."""
        deadline = time.monotonic() + timeout
        read_at = time.monotonic()
        while True:
            if seen is None or self._event.is_set():
                self._event.clear()
                view = await self.jobs.view(self.job_id)
                read_at = time.monotonic()
                if view is None:
                    return None
                self._queued = view.status is JobStatus.IN_QUEUE
                if seen is None or change_key(view) != change_key(seen):
                    return view
            now = time.monotonic()
            if now >= deadline:
                return seen
            wake = min(deadline, read_at + self.resync_seconds)
            try:
                await asyncio.wait_for(self._event.wait(), max(0.0, wake - now))
            except TimeoutError:
                if time.monotonic() >= read_at + self.resync_seconds:
                    self._event.set()  # no news for long: read again, in case one was lost


class AsyncJobs:
    """Awaitable access to ``queue`` and ``store``; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        store: ArtifactStore,
        *,
        threads: int = MAX_THREADS,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        self.queue = queue
        self.store = store
        self.resync_seconds = resync_seconds
        self._limiter = anyio.CapacityLimiter(threads)
        self._watches: dict[str, set[JobWatch]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def _run(self, call: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    async def submit(self, job: Job) -> None:
        """Queue ``job``; raises ``QueueFull`` at the queue's limit."""
        await self._run(partial(self.queue.submit, job))

    async def finish_now(self, job: Job, outcome: Outcome) -> None:
        await self._run(partial(self.queue.finish_now, job, outcome))

    async def view(self, job_id: str) -> JobView | None:
        return await self._run(partial(self.queue.view, job_id))

    async def cancel(self, job_id: str) -> CancelResult:
        return await self._run(partial(self.queue.cancel, job_id))

    async def live_workers(self) -> list[WorkerInfo]:
        """Workers alive anywhere (raises ``QueueUnavailable`` when the queue is away)."""
        return await self._run(self.queue.live_workers)

    async def open_file(self, key: str) -> Artifact:
        """An output file; raises ``NotFound`` for an unknown key."""
        return await self._run(partial(self.store.open, key))

    @asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[JobWatch]:
        """Wait on ``job_id`` for the length of the block: ``await watch.next(seen, ...)``.

        Registered before the first read, so no change between a read and the wait is missed.
        """
        self._follow_changes()
        watch = JobWatch(self, job_id, self.resync_seconds)
        self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._watches.get(job_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[job_id]

    @property
    def waiting(self) -> int:
        """Clients waiting on a job now (for tests and metrics)."""
        return sum(len(watches) for watches in self._watches.values())

    def close(self) -> None:
        """Stop following the queue's changes."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._loop = None

    # -- the change feed ---------------------------------------------------------------------

    def _follow_changes(self) -> None:
        """Subscribe to the queue's changes (once), delivered to the event loop that serves the
        app: the running one (a test client may run each request on a loop of its own)."""
        self._loop = asyncio.get_running_loop()
        if self._unsubscribe is None:
            self._unsubscribe = self.queue.watch(self._changed)

    def _changed(self, key: str) -> None:
        """From the queue (any thread): hand the change to the event loop."""
        loop = self._loop
        if loop is None:
            return
        with suppress(RuntimeError):  # the loop is closed: the app is gone
            loop.call_soon_threadsafe(self._dispatch, key)

    def _dispatch(self, key: str) -> None:
        if key in (QUEUE_MOVED, RESYNC):
            for watches in self._watches.values():
                for watch in watches:
                    watch.poke(key)
            return
        for watch in self._watches.get(key, ()):
            watch.poke(key)
