"""An engine that cannot go on (``WorkerDead``, e.g. a parallel group that lost a rank): the
worker goes defunct and closes the engine; its batch fails when it serves alone, and is left to
its lease (another worker takes it on Redis) when it shares the queue."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from core.errors import WorkerDead
from pipelines.fake import FakeEngine
from pipelines.safety import NeverFlagChecker
from pipelines.types import CancelCheck, EditRequest, EditResult, StepCallback
from service.jobs import JobStatus
from service.queue.memory import InMemoryJobQueue
from service.status import WorkerState
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions
from tests.worker.worker_helpers import make_job, wait_until

DEATH = "parallel ulysses:2 is down: rank 1 (pid 4242) killed by SIGKILL"


class DyingEngine(FakeEngine):
    """Its group dies on the first batch; it records being closed."""

    def __init__(self) -> None:
        super().__init__(num_steps=2)
        self.closed = False

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        raise WorkerDead(DEATH)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("alone", [True, False], ids=["serve", "shared-queue"])
def test_a_dead_engine_makes_the_worker_defunct(tmp_path: Path, alone: bool) -> None:
    queue = InMemoryJobQueue()
    engine = DyingEngine()
    worker = Worker(
        lambda: engine,
        queue,
        LocalArtifactStore(tmp_path),
        options=WorkerOptions(warmup=False, claim_timeout=0.05, fail_jobs_when_broken=alone),
        safety_factory=NeverFlagChecker,
    )
    worker.start()
    try:
        job = make_job()
        queue.submit(job)
        wait_until(lambda: worker.state is WorkerState.DEFUNCT)
        assert DEATH in (worker.error or "")
        if alone:
            wait_until(lambda: queue.view(job.id).status is JobStatus.COMPLETED)  # type: ignore[union-attr]
            outcome = queue.view(job.id).outcome  # type: ignore[union-attr]
            assert outcome is not None and not outcome.ok
            assert DEATH in (outcome.error or "")
        else:
            view = queue.view(job.id)
            assert view is not None and view.status is JobStatus.IN_PROGRESS  # its lease runs
    finally:
        worker.stop(timeout=10)
    assert engine.closed
