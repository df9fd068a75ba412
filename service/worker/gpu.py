"""The GPU loop: load the model, then run one batch at a time.

It owns the worker's state machine (:class:`~service.worker.state.WorkerState`): setup loads
the safety checker (fail closed) and the engine, and warms it up; a batch drops the jobs
cancelled or past their start deadline while they waited, runs the rest on the engine, logs
``step k/N`` to each job and renews the lease of every held job at each step, and on
out-of-memory retries the batch in halves down to one job. Results go to the finisher's pool, so
the next batch starts while the last one's images are encoded. An engine that cannot go on
(``WorkerDead``: a parallel group lost a rank) makes the worker defunct; the batch's jobs fail
when this worker serves alone, or go back to the queue when their lease lapses (Redis). The
engine is closed (``close()``, when it has one) when the loop ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from core.errors import Flux2Error, GenerationFailed, OutOfMemory, WorkerDead
from pipelines.protocol import EditEngine
from pipelines.types import StepEvent
from service.jobs import LogEntry
from service.logs import request_context
from service.outcomes import CANCELLED, timed_out
from service.queue.base import JobQueue
from service.status import WorkerState
from service.worker.finishing import Finisher
from service.worker.policy import BatchPolicy
from service.worker.previews import PreviewWriter
from service.worker.screening import SafetyGate
from service.worker.state import (
    Handoff,
    HeldJobs,
    MetricsLink,
    Prepared,
    Signals,
)

logger = logging.getLogger(__name__)


class GpuLoop:
    """Setup, then batches from ``handoff`` until it says stop; see the module docstring."""

    def __init__(
        self,
        engine_factory: Callable[[], EditEngine],
        queue: JobQueue,
        finisher: Finisher,
        gate: SafetyGate,
        handoff: Handoff[list[Prepared]],
        signals: Signals,
        held: HeldJobs,
        link: MetricsLink,
        *,
        policy: BatchPolicy,
        warmup: bool = True,
        name: str = "worker",
        fail_on_death: bool = True,
        previews: PreviewWriter | None = None,
    ) -> None:
        self.engine_factory = engine_factory
        self.queue = queue
        self.finisher = finisher
        self.gate = gate
        self.handoff = handoff
        self.signals = signals
        self.held = held
        self.link = link
        self.policy = policy
        self.warmup = warmup
        self.name = name
        self.fail_on_death = fail_on_death
        self.previews = previews
        self.state = WorkerState.STARTING
        self.error: str | None = None
        self.engine: EditEngine | None = None
        self.engine_calls = 0

    def main(self) -> None:
        """The GPU thread: setup, then the batch loop."""
        self._setup()
        try:
            while True:
                self.signals.gpu_idle.set()
                self.signals.may_claim.set()
                batch = self.handoff.get()
                self.signals.gpu_idle.clear()
                if not self.policy.claims_while_busy:
                    self.signals.may_claim.clear()  # until the batch is nearly done
                if batch is None:
                    return
                self.state = WorkerState.BUSY
                try:
                    self.run_batch(batch)
                finally:
                    if self.state is WorkerState.BUSY:  # not if another loop died meanwhile
                        self.state = WorkerState.READY
        except Exception as exc:
            logger.exception("worker GPU loop died")
            self.died(exc)
        finally:
            self._close_engine()

    def died(self, exc: Exception) -> None:
        """A loop died: the worker is defunct and stops claiming."""
        self.state = WorkerState.DEFUNCT
        self.error = f"{type(exc).__name__}: {exc}"
        self.signals.stopping.set()

    @property
    def broken(self) -> bool:
        """Setup failed: jobs cannot run here."""
        return self.state is WorkerState.SETUP_FAILED or self.engine is None

    def run_batch(self, batch: list[Prepared]) -> None:
        """Run a batch, minus the jobs cancelled or timed out while they waited."""
        runnable = []
        for item in batch:
            if self.queue.is_cancelled(item.job.id):
                self.finisher.finish(item.job, CANCELLED)
            elif item.job.start_deadline is not None and time.time() > item.job.start_deadline:
                self.finisher.finish(item.job, timed_out())
            else:
                runnable.append(item)
        if runnable:
            self.run_on_engine(runnable)

    def run_on_engine(self, batch: list[Prepared]) -> None:
        """Run ``batch``; on out-of-memory split it in halves and retry, down to one job."""
        assert self.engine is not None
        ids = [item.job.id for item in batch]
        for job_id in ids:
            self.queue.log(
                job_id, LogEntry(f"Running FLUX.2 on {self.name} (batch of {len(batch)})")
            )
        metrics = self.link.metrics
        timer = metrics.step_timer() if metrics is not None else None
        items = {item.job.id: item for item in batch}

        def on_step(event: StepEvent) -> None:
            if timer is not None:
                timer.step()
            if self.policy.may_prefetch(event.total - event.step):
                self.signals.may_claim.set()  # the next batch may be gathered now
            self.queue.heartbeat(sorted(self.held.snapshot()))
            for request_id in event.request_ids:
                self.queue.log(request_id, LogEntry(f"step {event.step}/{event.total}"))
            if event.previews and self.previews is not None:
                self.previews.publish(event.previews, items)

        self.engine_calls += 1
        if metrics is not None:
            metrics.observe_batch(len(batch), sum(i.request.num_images for i in batch))
        try:
            with request_context(",".join(ids)):
                results = self.engine.run(
                    [item.request for item in batch],
                    on_step=on_step,
                    should_cancel=self.queue.is_cancelled,
                )
        except OutOfMemory as exc:
            if len(batch) > 1:
                middle = len(batch) // 2
                logger.warning("out of memory on %d jobs; retrying in halves", len(batch))
                self.run_on_engine(batch[:middle])
                self.run_on_engine(batch[middle:])
                return
            self.finisher.fail_all(batch, exc)
            return
        except WorkerDead as exc:
            if self.fail_on_death:  # alone: nobody else will run them
                self.finisher.fail_all(batch, exc)
            raise  # the loop dies: defunct
        except Flux2Error as exc:
            self.finisher.fail_all(batch, exc)
            return
        except Exception as exc:
            logger.exception("engine failed on %s", ids)
            self.finisher.fail_all(batch, GenerationFailed(f"generation failed: {exc}"))
            return
        if timer is not None:
            timer.done()
        for item, result in zip(batch, results, strict=True):
            self.finisher.submit(item, result)

    def _close_engine(self) -> None:
        close = getattr(self.engine, "close", None)  # optional: engines with processes
        if callable(close):
            try:
                close()
            except Exception:
                logger.exception("closing the engine failed")

    def _setup(self) -> None:
        try:
            self.gate.load()  # fail closed: no checker, no service
            self.engine = self.engine_factory()
            if self.warmup:
                self.engine.warmup()
            self.state = WorkerState.READY
            logger.info("worker ready")
        except Flux2Error as exc:
            self._setup_failed(exc.message)
        except Exception as exc:  # the model could not load: say why, keep answering
            logger.exception("engine setup failed")
            self._setup_failed(f"{type(exc).__name__}: {exc}")
        finally:
            self.signals.ready.set()

    def _setup_failed(self, message: str) -> None:
        self.state = WorkerState.SETUP_FAILED
        self.error = message
        logger.error("engine setup failed: %s", message)
