"""The scheduler thread: claim jobs, gather a batch, leave stragglers, hand the batch to the GPU.

Each job starts preparing the moment it is claimed. The rules (how long to gather, when to leave
jobs still downloading, which jobs share a batch, when a busy worker may claim) are
:class:`~service.worker.policy.BatchPolicy`'s; this module does what it says, with threads and
the queue. Jobs that cannot join the batch are given back at once, so they never wait behind a
batch they cannot join. While the engine failed to load, a lone worker fails the jobs it gets
(a clear error instead of waiting forever); a worker among others leaves them to the others.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait

from core.errors import QueueUnavailable, WorkerDead
from service.jobs import Job, LogEntry
from service.outcomes import failure
from service.queue.base import JobQueue
from service.worker.finishing import Finisher
from service.worker.gpu import GpuLoop
from service.worker.housekeeping import Housekeeping
from service.worker.policy import BatchPolicy, Clock, split_by_key
from service.worker.preparation import Preparer
from service.worker.state import Handoff, HeldJobs, Prepared, Signals

logger = logging.getLogger(__name__)

#: First and longest wait before claiming again while the queue is unreachable.
OUTAGE_BACKOFF = (0.2, 5.0)

#: A claimed job and its preparation (None when the job already finished).
Claimed = tuple[Job, "Future[Prepared | None]"]


class Scheduler:
    """The scheduler thread's loop; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        preparer: Preparer,
        finisher: Finisher,
        gpu: GpuLoop,
        housekeeping: Housekeeping,
        handoff: Handoff[list[Prepared]],
        signals: Signals,
        held: HeldJobs,
        *,
        policy: BatchPolicy,
        claim_timeout: float = 0.25,
        fail_jobs_when_broken: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        self.queue = queue
        self.preparer = preparer
        self.finisher = finisher
        self.gpu = gpu
        self.housekeeping = housekeeping
        self.handoff = handoff
        self.signals = signals
        self.held = held
        self.policy = policy
        self.claim_timeout = claim_timeout
        self.fail_jobs_when_broken = fail_jobs_when_broken
        self.clock = clock
        # Claimed jobs still being prepared when their batch went: they join the next one.
        self.deferred: list[Claimed] = []

    def main(self) -> None:
        """The scheduler thread."""
        self.signals.ready.wait()
        if self.gpu.broken and not self.fail_jobs_when_broken:
            self.handoff.stop()
            return
        outage = OUTAGE_BACKOFF[0]
        try:
            while not self.signals.stopping.is_set():
                try:
                    self._turn()
                    outage = OUTAGE_BACKOFF[0]
                except QueueUnavailable as exc:
                    # Redis is away: jobs claimed are held by their lease (another worker, or
                    # this one, takes them back once it lapses); wait and try again.
                    logger.warning("cannot claim: %s; retrying in %.1f s", exc.message, outage)
                    self.signals.stopping.wait(outage)
                    outage = min(outage * 2, OUTAGE_BACKOFF[1])
        except Exception as exc:
            logger.exception("worker scheduler died")
            self.gpu.died(exc)
        finally:
            self.handoff.stop()

    def _turn(self) -> None:
        """One round: housekeeping, then claim, gather and hand over a batch."""
        self.housekeeping.tick()
        if self.gpu.broken:
            self._fail_claims()
            return
        if not self.signals.may_claim.wait(self.claim_timeout):
            return  # busy, and not near the end of the batch: leave jobs to others
        group = self.group(self.claim_batch())
        if group:
            self._hand_over(group)

    def claim_batch(self) -> list[Claimed]:
        """Block for one job (or take the deferred ones), then let others join as the policy
        allows. Each job's inputs are being prepared from the moment it is claimed."""
        claimed, self.deferred = self.deferred, []
        if not claimed:
            first = self._claim(self.claim_timeout)
            if not first:
                return []
            claimed = [self._start(first[0])]
        gathering = self.policy.gathering(self.clock(), sum(job.num_images for job, _ in claimed))
        while not self.signals.stopping.is_set():
            wait_for = gathering.next_wait(self.clock(), gpu_idle=self.signals.gpu_idle.is_set())
            if wait_for is None:
                break
            more = self._claim(wait_for)
            if not more:
                continue
            job = more[0]
            if not gathering.admits(job.num_images):
                self.finisher.release([job.id])  # too big to join: first in line for the next
                break
            claimed.append(self._start(job))
            gathering.add(job.num_images)
        return claimed

    def group(self, claimed: list[Claimed]) -> list[Prepared]:
        """The oldest prepared job's batch; jobs of other shapes are given back, and jobs still
        preparing past the straggler grace wait (still held) for the next batch."""
        watch = self.policy.stragglers(self.clock())
        pending = {future for _, future in claimed}
        while pending and not self.signals.stopping.is_set():
            _, pending = wait(pending, timeout=self.policy.gather_poll, return_when=FIRST_COMPLETED)
            if watch.leave_pending(
                self.clock(),
                done=len(claimed) - len(pending),
                pending=len(pending),
                gpu_idle=self.signals.gpu_idle.is_set(),
            ):
                break
        self.deferred = [(job, future) for job, future in claimed if future in pending]
        for job, _ in self.deferred:
            self.queue.log(job.id, LogEntry("Inputs still downloading: joins the next batch"))
        ready = [future for _, future in claimed if future not in pending]
        prepared = [item for future in ready if (item := future.result()) is not None]
        pixels = self.preparer.reference_pixels
        group, others = split_by_key(prepared, lambda item: item.request.batch_key(pixels))
        for item in others:  # keep their decoded images in case this worker gets them back
            self.preparer.keep(item)
        if others:
            self.finisher.release([item.job.id for item in others])
        return group

    def release_deferred(self) -> None:
        """Give back the jobs left for a next batch that will not come (a drain)."""
        deferred, self.deferred = self.deferred, []
        self.finisher.release([job.id for job, _ in deferred])

    def _hand_over(self, group: list[Prepared]) -> None:
        if not self.policy.claims_while_busy:
            # Before the put: the GPU sets it again only after taking this group (in its last
            # steps, or when idle), so the scheduler does not claim the next jobs in between.
            self.signals.may_claim.clear()
        if not self.handoff.put(group, self.signals.stopping):
            self.finisher.release([item.job.id for item in group])

    def _claim(self, timeout: float) -> list[Job]:
        jobs = self.queue.claim(1, timeout)
        self.held.add(job.id for job in jobs)
        return jobs

    def _start(self, job: Job) -> Claimed:
        return job, self.preparer.start(job)

    def _fail_claims(self) -> None:
        jobs = self._claim(self.claim_timeout)
        outcome = failure(WorkerDead(f"the model failed to load: {self.gpu.error}"))
        for job in jobs:
            self.finisher.finish(job, outcome)
