"""Periodic sweeps any worker runs: take back jobs of dead workers, forget expired results.

``reap`` re-queues jobs whose worker stopped renewing their lease and completes as failed (dead
letters) those that lost their worker too often; their webhooks are sent here. ``expire``
forgets results past their lifetime and deletes their files.
"""

from __future__ import annotations

import logging
import time

from service.queue.base import JobQueue
from service.storage.base import ArtifactStore
from service.worker.finishing import Finisher
from service.worker.policy import Clock

logger = logging.getLogger(__name__)


class Housekeeping:
    """Runs ``reap`` every ``reap_every`` and ``expire`` every ``expire_every`` seconds."""

    def __init__(
        self,
        queue: JobQueue,
        store: ArtifactStore,
        finisher: Finisher,
        *,
        reap_every: float = 5.0,
        expire_every: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.queue = queue
        self.store = store
        self.finisher = finisher
        self.reap_every = reap_every
        self.expire_every = expire_every
        self.clock = clock
        self._last_reap = self._last_expiry = clock()

    def tick(self) -> None:
        """Run the sweeps that are due."""
        now = self.clock()
        if now - self._last_reap > self.reap_every:
            self._last_reap = now
            self.reap()
        if now - self._last_expiry > self.expire_every:
            self.expire()

    def reap(self) -> None:
        reaped = self.queue.reap()
        if reaped.requeued:
            logger.warning(
                "took back %d jobs from dead workers: %s",
                len(reaped.requeued),
                list(reaped.requeued),
            )
        for job in reaped.failed:  # dead letters: completed as failed, their webhook is due
            logger.error("job %s lost its worker too often: failed", job.id)
            self.finisher.send_webhook(job)

    def expire(self) -> None:
        """Forget expired results and delete their files."""
        self._last_expiry = self.clock()
        for job_id in self.queue.expire():
            self.store.delete(job_id)
