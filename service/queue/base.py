"""The queue seam between the HTTP layer and the GPU worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from service.jobs import CancelResult, Job, JobView, LogEntry, Outcome, Reaped, WorkerInfo

#: What a change listener is told: a job id (that job changed), or one of these.
QUEUE_MOVED = "@queue"  # queue positions moved (a job was queued, claimed or left the queue)
RESYNC = "*"  # changes may have been missed (the feed reconnected): look at everything again

#: Called with a job id, ``QUEUE_MOVED`` or ``RESYNC``, from any thread; must return quickly.
ChangeListener = Callable[[str], None]


class JobQueue(Protocol):
    """Jobs in, batches out, results back. All methods are thread-safe and return quickly.

    Status flow: ``submit`` (IN_QUEUE) → ``claim`` (IN_PROGRESS) → ``complete`` (COMPLETED).
    ``finish_now`` records a job that is COMPLETED from the start (e.g. invalid input).
    """

    def submit(self, job: Job) -> None:
        """Queue a job. Raises ``QueueFull`` when the queue is at its limit."""
        ...

    def finish_now(self, job: Job, outcome: Outcome) -> None:
        """Record a job that never needs the worker (it is COMPLETED with ``outcome``)."""
        ...

    def view(self, job_id: str) -> JobView | None:
        """Status, queue position, logs and outcome; None for unknown or expired ids."""
        ...

    def claim(self, max_jobs: int, timeout: float) -> list[Job]:
        """Take up to ``max_jobs`` queued jobs (oldest first, normal before low priority),
        waiting up to ``timeout`` seconds for the first; marks them IN_PROGRESS, counts a
        delivery and starts their lease. Cancelled jobs are never handed out."""
        ...

    def heartbeat(self, job_ids: list[str]) -> None:
        """Renew the lease of claimed jobs (called every denoising step). A job whose lease
        lapses is taken back by ``reap`` for another worker."""
        ...

    def release(self, job_ids: list[str]) -> list[Job]:
        """Give claimed jobs back, at the front of the queue (a draining or splitting worker).
        A job cancelled while held is completed as cancelled instead and returned: nobody else
        will send its webhook."""
        ...

    def reap(self) -> Reaped:
        """Re-queue claimed jobs whose worker died (lease expired); a job that lost its worker
        too often is completed as failed instead (dead letter). Says which were which: the
        caller sends the dead letters' webhooks."""
        ...

    def log(self, job_id: str, entry: LogEntry) -> None:
        """Append a log line to a job."""
        ...

    def complete(self, job_id: str, outcome: Outcome) -> Job | None:
        """Mark a job COMPLETED with ``outcome`` — once: a second completion (a job that ran
        twice after a lease expired) keeps the first. Returns the job when this call completed
        it, None when it was completed already or is unknown (so a webhook goes out once)."""
        ...

    def cancel(self, job_id: str) -> CancelResult:
        """Ask for a job to stop. A queued job is completed as cancelled at once (returned in
        ``completed``, so the caller sends its webhook); a running one is flagged and the worker
        stops it before its next step (and sends the webhook)."""
        ...

    def is_cancelled(self, job_id: str) -> bool:
        """Whether cancellation of a job was asked for."""
        ...

    def expire(self) -> list[str]:
        """Forget completed jobs older than the result lifetime; returns their ids."""
        ...

    def depth(self) -> int:
        """Jobs waiting to be claimed (IN_QUEUE), all priorities; cheap, for metrics."""
        ...

    def announce(self, worker: WorkerInfo, ttl: float) -> None:
        """Record that ``worker`` is alive, in its state, for ``ttl`` seconds."""
        ...

    def withdraw(self, name: str) -> None:
        """Forget a worker that stopped."""
        ...

    def live_workers(self) -> list[WorkerInfo]:
        """The workers whose last announcement has not lapsed, by name. Raises
        ``QueueUnavailable`` when the queue cannot be reached (readiness says so)."""
        ...

    def oldest_queued_age(self) -> float | None:
        """Seconds the oldest waiting job has waited; None when none waits (for metrics)."""
        ...

    def watch(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener`` after every change of a job's status, logs or outcome, and when
        queue positions move; returns the function that stops it. On Redis one subscription
        per queue object feeds every listener, whichever node made the change; after a
        reconnect listeners get ``RESYNC``."""
        ...

    def close(self) -> None:
        """Wake waiting workers and stop accepting jobs."""
        ...
