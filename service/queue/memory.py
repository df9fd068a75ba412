"""The in-process job queue: the single-machine default (API and worker in one process)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from core.errors import QueueFull
from service.jobs import (
    CancelOutcome,
    CancelResult,
    Job,
    JobStatus,
    JobView,
    LogEntry,
    Outcome,
    Priority,
    Reaped,
    WorkerInfo,
)
from service.outcomes import CANCELLED
from service.queue.base import QUEUE_MOVED, ChangeListener

logger = logging.getLogger(__name__)


class InMemoryJobQueue:
    """Implements :class:`service.queue.base.JobQueue` with a lock and a condition variable."""

    def __init__(self, *, max_queued: int = 1000, result_ttl: float = 3600.0) -> None:
        self.max_queued = max_queued
        self.result_ttl = result_ttl
        self._jobs: dict[str, Job] = {}
        self._pending: list[str] = []  # queued ids, in claim order
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self._listeners: list[ChangeListener] = []
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}  # name -> (info, expires at)

    def submit(self, job: Job) -> None:
        with self._lock:
            if len(self._pending) >= self.max_queued:
                raise QueueFull(f"the queue is full ({self.max_queued} requests waiting)")
            job.status = JobStatus.IN_QUEUE
            self._jobs[job.id] = job
            if job.priority is Priority.LOW:
                self._pending.append(job.id)
            else:
                lows = [
                    i
                    for i, jid in enumerate(self._pending)
                    if self._jobs[jid].priority is Priority.LOW
                ]
                self._pending.insert(lows[0] if lows else len(self._pending), job.id)
            self._ready.notify()
        self._changed(job.id, QUEUE_MOVED)

    def finish_now(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            self._jobs[job.id] = job
            self._finish(job, outcome)
        self._changed(job.id)

    def view(self, job_id: str) -> JobView | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or self._expired(job):
                return None
            position = self._pending.index(job_id) if job.status is JobStatus.IN_QUEUE else None
            return JobView(
                job.id, job.status, position, tuple(job.logs), job.outcome, owner=job.owner
            )

    def claim(self, max_jobs: int, timeout: float) -> list[Job]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._pending and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._ready.wait(left)
            claimed: list[Job] = []
            while self._pending and len(claimed) < max_jobs:
                job = self._jobs[self._pending.pop(0)]
                job.status = JobStatus.IN_PROGRESS
                job.started_at = time.time()
                job.deliveries += 1
                claimed.append(job)
        if claimed:
            self._changed(*(job.id for job in claimed), QUEUE_MOVED)
        return claimed

    def heartbeat(self, job_ids: list[str]) -> None:
        return None  # one process: a dead worker takes its queue with it

    def release(self, job_ids: list[str]) -> list[Job]:
        cancelled: list[Job] = []
        with self._lock:
            for job_id in reversed(job_ids):
                job = self._jobs.get(job_id)
                if job is None or job.status is not JobStatus.IN_PROGRESS:
                    continue
                if job.cancel_requested:  # cancelled while held: it ends here, not in the queue
                    self._finish(job, CANCELLED)
                    cancelled.insert(0, job)
                    continue
                job.status = JobStatus.IN_QUEUE
                job.started_at = None
                self._pending.insert(0, job_id)
            self._ready.notify_all()
        self._changed(*job_ids, QUEUE_MOVED)
        return cancelled

    def reap(self) -> Reaped:
        return Reaped()  # one process: no worker can die without the queue

    def log(self, job_id: str, entry: LogEntry) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status is JobStatus.COMPLETED:
                return
            job.logs.append(entry)
        self._changed(job_id)

    def complete(self, job_id: str, outcome: Outcome) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status is JobStatus.COMPLETED:
                return None
            self._finish(job, outcome)
        self._changed(job_id)
        return job

    def cancel(self, job_id: str) -> CancelResult:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or self._expired(job):
                return CancelResult(CancelOutcome.NOT_FOUND)
            if job.status is JobStatus.COMPLETED:
                return CancelResult(CancelOutcome.ALREADY_COMPLETED)
            job.cancel_requested = True
            if job.status is not JobStatus.IN_QUEUE:
                return CancelResult(CancelOutcome.REQUESTED)
            self._pending.remove(job_id)
            self._finish(job, CANCELLED)
        self._changed(job_id, QUEUE_MOVED)
        return CancelResult(CancelOutcome.REQUESTED, completed=job)

    def is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            return job is None or job.cancel_requested or job.status is JobStatus.COMPLETED

    def expire(self) -> list[str]:
        with self._lock:
            gone = [jid for jid, job in self._jobs.items() if self._expired(job)]
            for jid in gone:
                del self._jobs[jid]
            return gone

    def depth(self) -> int:
        with self._lock:
            return len(self._pending)

    def announce(self, worker: WorkerInfo, ttl: float) -> None:
        with self._lock:
            self._workers[worker.name] = (worker, worker.seen_at + ttl)

    def withdraw(self, name: str) -> None:
        with self._lock:
            self._workers.pop(name, None)

    def live_workers(self) -> list[WorkerInfo]:
        now = time.time()
        with self._lock:
            return sorted(
                (info for info, expires in self._workers.values() if expires > now),
                key=lambda info: info.name,
            )

    def oldest_queued_age(self) -> float | None:
        with self._lock:
            if not self._pending:
                return None
            oldest = min(self._jobs[job_id].created_at for job_id in self._pending)
        return max(0.0, time.time() - oldest)

    def watch(self, listener: ChangeListener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()

    def _changed(self, *keys: str) -> None:
        """Tell the listeners (outside the lock: they may call back into the queue)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            for key in keys:
                try:
                    listener(key)
                except Exception:  # a broken listener must not break the queue
                    logger.exception("change listener failed")

    # -- internals (lock held) ---------------------------------------------------------------

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if job.status is JobStatus.IN_QUEUE and job.id in self._pending:
            self._pending.remove(job.id)
        job.status = JobStatus.COMPLETED
        job.outcome = outcome
        job.completed_at = time.time()

    def _expired(self, job: Job) -> bool:
        return job.completed_at is not None and time.time() - job.completed_at > self.result_ttl
