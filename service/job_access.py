"""The queue and the store as the async routes use them: off the event loop, and awaitable waits.

Every call runs on a bounded thread pool, so a slow or absent backend (Redis across a network)
never blocks the event loop that serves every other client. :meth:`AsyncJobs.next_change` is the
one way routes wait for a job: the sync run waits for its completion, the status stream for each
change. Today it polls the queue at the interval it is given; making it event-driven (in-process
notifications, Redis pub/sub) changes this method, not the routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import anyio

from service.jobs import CancelResult, Job, JobView, Outcome
from service.queue.base import JobQueue
from service.storage.base import Artifact, ArtifactStore

T = TypeVar("T")

#: Queue and store calls in flight at once from one app (each holds a pool thread).
MAX_THREADS = 32


def change_key(view: JobView) -> tuple[object, ...]:
    """What makes two views of a job differ for a waiting client."""
    return (view.status, view.queue_position, len(view.logs), view.outcome is not None)


class AsyncJobs:
    """Awaitable access to ``queue`` and ``store``; see the module docstring."""

    def __init__(self, queue: JobQueue, store: ArtifactStore, *, threads: int = MAX_THREADS):
        self.queue = queue
        self.store = store
        self._limiter = anyio.CapacityLimiter(threads)

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

    async def open_file(self, key: str) -> Artifact:
        """An output file; raises ``NotFound`` for an unknown key."""
        return await self._run(partial(self.store.open, key))

    async def next_change(
        self,
        job_id: str,
        seen: JobView | None,
        *,
        timeout: float,
        poll: float,
    ) -> JobView | None:
        """The job's view once it differs from ``seen`` (``None`` at first: at once), or its
        latest view when ``timeout`` passes first; None when the job is gone (expired)."""
        deadline = time.monotonic() + timeout
        last = None if seen is None else change_key(seen)
        while True:
            view = await self.view(job_id)
            if view is None or change_key(view) != last:
                return view
            left = deadline - time.monotonic()
            if left <= 0:
                return view
            await anyio.sleep(min(poll, left))
