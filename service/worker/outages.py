"""The queue and the store as the worker's stages use them: riding through a Redis outage.

A worker must not die or lose a result because Redis restarts. Wrapped here:

* progress is best effort: log lines, lease heartbeats and "was it cancelled?" answer nothing
  (or "no") while Redis is away, and the batch goes on;
* results are kept: ``complete``, ``release`` and storing an output image are retried with
  backoff until Redis answers again (for up to ``give_up_after``, then the job is left to its
  lease, which lapses so another worker runs it);
* everything else (claiming, reaping) raises :class:`~core.errors.QueueUnavailable`, and the
  scheduler waits and tries again.

Failures are logged once per outage, not once per call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from core.errors import QueueUnavailable
from service.jobs import (
    CancelResult,
    Job,
    JobView,
    LogEntry,
    Outcome,
    Reaped,
    WorkerInfo,
)
from service.queue.base import ChangeListener, JobQueue
from service.storage.base import Artifact, ArtifactStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Retries of a result write during an outage: the first and the longest wait, and how long in
#: all before the job is left to its lease.
RETRY_BACKOFF = (0.2, 5.0)
GIVE_UP_AFTER = 600.0


class OutageLog:
    """Says "Redis is away" once when an outage starts and once when it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None

    def failed(self, what: str, exc: QueueUnavailable) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        logger.warning("queue unreachable (%s): %s; riding it out", what, exc.message)

    def worked(self) -> None:
        with self._lock:
            if self._since is None:
                return
            lasted, self._since = time.monotonic() - self._since, None
        logger.warning("queue reachable again after %.1f s", lasted)


class Retrier:
    """Runs calls best effort or until they succeed (see the module docstring)."""

    def __init__(
        self, *, give_up_after: float = GIVE_UP_AFTER, backoff: tuple[float, float] = RETRY_BACKOFF
    ) -> None:
        self.give_up_after = give_up_after
        self.backoff = backoff
        self.log = OutageLog()

    def best_effort(self, what: str, call: Callable[[], T], default: T) -> T:
        try:
            result = call()
        except QueueUnavailable as exc:
            self.log.failed(what, exc)
            return default
        self.log.worked()
        return result

    def until_done(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried while the queue is unreachable; raises ``QueueUnavailable``
        after ``give_up_after`` seconds."""
        deadline = time.monotonic() + self.give_up_after
        delay = self.backoff[0]
        while True:
            try:
                result = call()
            except QueueUnavailable as exc:
                self.log.failed(what, exc)
                if time.monotonic() + delay > deadline:
                    logger.error("gave up on %s after %.0f s: %s", what, self.give_up_after, exc)
                    raise
                # A drain does not stop retries: a result is worth the wait.
                time.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            self.log.worked()
            return result


class OutageTolerantQueue:
    """A :class:`JobQueue` whose progress calls are best effort and result calls retried."""

    def __init__(self, queue: JobQueue, retrier: Retrier) -> None:
        self.inner = queue
        self.retrier = retrier

    # best effort: progress
    def log(self, job_id: str, entry: LogEntry) -> None:
        self.retrier.best_effort("log", lambda: self.inner.log(job_id, entry), None)

    def heartbeat(self, job_ids: list[str]) -> None:
        self.retrier.best_effort("heartbeat", lambda: self.inner.heartbeat(job_ids), None)

    def is_cancelled(self, job_id: str) -> bool:
        return self.retrier.best_effort(
            "is_cancelled", lambda: self.inner.is_cancelled(job_id), False
        )

    def announce(self, worker: WorkerInfo, ttl: float) -> None:
        self.retrier.best_effort("announce", lambda: self.inner.announce(worker, ttl), None)

    def withdraw(self, name: str) -> None:
        self.retrier.best_effort("withdraw", lambda: self.inner.withdraw(name), None)

    # retried: results
    def complete(self, job_id: str, outcome: Outcome) -> Job | None:
        return self.retrier.until_done("complete", lambda: self.inner.complete(job_id, outcome))

    def release(self, job_ids: list[str]) -> list[Job]:
        return self.retrier.until_done("release", lambda: self.inner.release(job_ids))

    # as they are: the scheduler handles QueueUnavailable
    def claim(self, max_jobs: int, timeout: float) -> list[Job]:
        return self.inner.claim(max_jobs, timeout)

    def reap(self) -> Reaped:
        return self.inner.reap()

    def expire(self) -> list[str]:
        return self.inner.expire()

    def submit(self, job: Job) -> None:
        self.inner.submit(job)

    def finish_now(self, job: Job, outcome: Outcome) -> None:
        self.inner.finish_now(job, outcome)

    def view(self, job_id: str) -> JobView | None:
        return self.inner.view(job_id)

    def cancel(self, job_id: str) -> CancelResult:
        return self.inner.cancel(job_id)

    def depth(self) -> int:
        return self.inner.depth()

    def live_workers(self) -> list[WorkerInfo]:
        return self.inner.live_workers()

    def oldest_queued_age(self) -> float | None:
        return self.inner.oldest_queued_age()

    def watch(self, listener: ChangeListener) -> Callable[[], None]:
        return self.inner.watch(listener)

    def close(self) -> None:
        self.inner.close()


class OutageTolerantStore:
    """An :class:`ArtifactStore` whose writes are retried while the store is unreachable."""

    def __init__(self, store: ArtifactStore, retrier: Retrier) -> None:
        self.inner = store
        self.retrier = retrier

    def put(self, owner: str, name: str, data: bytes, content_type: str) -> str:
        return self.retrier.until_done(
            "storing an output", lambda: self.inner.put(owner, name, data, content_type)
        )

    def open(self, key: str) -> Artifact:
        return self.inner.open(key)

    def delete(self, owner: str) -> None:
        self.inner.delete(owner)
