"""Finishing: every job this worker holds ends here, exactly once, whatever ended it.

A finished engine run is checked, encoded and stored (:mod:`service.worker.results`) on the
finish pool, off the GPU thread; then the job is completed in the queue, its metrics recorded,
its webhook sent and it is no longer held. Failures, cancellations and jobs given back to the
queue (with the webhook of any job cancelled while held) go through the same door.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from core.errors import Flux2Error, GenerationFailed
from pipelines.types import EditResult
from service.jobs import Job, LogEntry, Outcome
from service.logs import request_context
from service.outcomes import CANCELLED, failure
from service.queue.base import JobQueue
from service.storage.base import ArtifactStore
from service.webhooks import WebhookSender
from service.worker.results import ResultWriter
from service.worker.screening import SafetyGate
from service.worker.state import HeldJobs, MetricsLink, Prepared

logger = logging.getLogger(__name__)


class Finisher:
    """Completes jobs, sends their webhooks and records their metrics; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        store: ArtifactStore,
        gate: SafetyGate,
        held: HeldJobs,
        link: MetricsLink,
        *,
        webhooks: WebhookSender | None = None,
        threads: int = 2,
        encode_threads: int = 4,
    ) -> None:
        self.queue = queue
        self.held = held
        self.link = link
        self.webhooks = webhooks
        self.results = ResultWriter(
            queue, store, gate, on_flagged=self.record_flagged, encode_threads=encode_threads
        )
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="flux2-finish")

    def submit(self, item: Prepared, result: EditResult) -> None:
        """Finish a job the engine ran, on the finish pool."""
        self._pool.submit(self._complete, item, result)

    def finish(self, job: Job, outcome: Outcome) -> None:
        """Complete ``job`` with ``outcome`` (once: a job completed already stays as it was)."""
        with request_context(job.id):
            if outcome.ok:
                self.queue.log(job.id, LogEntry("Completed"))
            else:
                self.queue.log(job.id, LogEntry(outcome.error or "Failed", level="ERROR"))
            done = self.queue.complete(job.id, outcome)
            if done is not None:
                if self.link.metrics is not None:
                    self.link.metrics.observe_job(job, outcome)
                logger.info("job finished: %s", outcome.error_type or "ok")
            self.held.discard([job.id])
            if done is not None:
                self.send_webhook(done, outcome)

    def finish_held(self, job: Job, outcome: Outcome) -> None:
        """Finish a job whose preparation ended, unless this worker gave it back meanwhile
        (a drain while its inputs were still coming): then it is another worker's now."""
        if job.id in self.held:
            self.finish(job, outcome)

    def fail_all(self, items: Iterable[Prepared], exc: Flux2Error) -> None:
        outcome = failure(exc)
        for item in items:
            self.finish(item.job, outcome)

    def release(self, job_ids: list[str]) -> None:
        """Give jobs back to the queue; one cancelled while this worker held it is completed by
        the queue instead, and its webhook sent here."""
        self.held.discard(job_ids)
        for done in self.queue.release(job_ids):
            self.send_webhook(done)

    def send_webhook(self, job: Job, outcome: Outcome | None = None) -> None:
        """Send the webhook of a completed ``job`` (its own outcome unless one is given)."""
        outcome = outcome or job.outcome
        if job.webhook_url and outcome is not None and self.webhooks is not None:
            self.webhooks.send(job.webhook_url, job.id, outcome)

    def record_flagged(self, stage: str, images: int) -> None:
        if self.link.metrics is not None:
            self.link.metrics.flagged(stage, images)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        self.results.shutdown()

    def _complete(self, item: Prepared, result: EditResult) -> None:
        with request_context(item.job.id):
            try:
                outcome = CANCELLED if result.cancelled else self.results.output(item, result)
            except Flux2Error as exc:
                outcome = failure(exc)
            except Exception as exc:
                logger.exception("finishing %s failed", item.job.id)
                outcome = failure(GenerationFailed(f"could not store the output: {exc}"))
            self.finish(item.job, outcome)
