"""Two workers on one queue: a busy worker leaves new jobs to an idle one (``prefetch_steps``).

Both workers run in this process on one in-memory queue (thread-safe, as the Redis queue is
shared by processes), each with its own fake engine.
"""

from __future__ import annotations

import time
from pathlib import Path

from worker_helpers import all_done, make_job, wait_until

from pipelines.fake import FakeEngine
from service.queue.memory import InMemoryJobQueue
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions


def start(engine: FakeEngine, queue: InMemoryJobQueue, tmp_path: Path, **options: object) -> Worker:
    worker = Worker(
        lambda: engine,
        queue,
        LocalArtifactStore(tmp_path / "files"),
        options=WorkerOptions(warmup=False, claim_timeout=0.05, **options),  # type: ignore[arg-type]
    )
    worker.start()
    return worker


def test_a_busy_worker_leaves_a_new_job_to_an_idle_one(tmp_path: Path) -> None:
    queue = InMemoryJobQueue()
    busy_engine = FakeEngine(num_steps=10, step_seconds=0.2)  # a 2 s batch
    idle_engine = FakeEngine(num_steps=10)
    busy = start(busy_engine, queue, tmp_path / "a", prefetch_steps=2)
    idle: Worker | None = None
    try:
        first, second = make_job(input={"seed": 1}), make_job(input={"seed": 2})
        queue.submit(first)
        wait_until(lambda: busy_engine.calls == [(first.id,)])
        queue.submit(second)  # 8 steps from the end of the busy worker's batch
        time.sleep(0.3)
        assert second.id not in busy.held  # left in the queue...
        idle = start(idle_engine, queue, tmp_path / "b", prefetch_steps=2)
        wait_until(all_done(queue, [first, second]))
        assert idle_engine.calls == [(second.id,)]  # ... for the idle worker
        assert busy_engine.calls == [(first.id,)]
    finally:
        busy.stop(timeout=10)
        if idle is not None:
            idle.stop(timeout=10)


def test_a_busy_worker_gathers_the_next_batch_in_its_last_steps(tmp_path: Path) -> None:
    queue = InMemoryJobQueue()
    engine = FakeEngine(num_steps=10, step_seconds=0.1)
    worker = start(engine, queue, tmp_path, prefetch_steps=2, max_batch_images=4)
    try:
        first = make_job(input={"seed": 1})
        queue.submit(first)
        wait_until(lambda: engine.calls == [(first.id,)])
        later = [make_job(input={"seed": seed}) for seed in (2, 3)]
        for job in later:
            queue.submit(job)
        wait_until(all_done(queue, [first, *later]))
        # Claimed near the end of the first batch, together: one engine call for both.
        assert engine.calls == [(first.id,), tuple(job.id for job in later)]
    finally:
        worker.stop(timeout=10)


def test_one_worker_alone_claims_the_next_jobs_at_once(tmp_path: Path) -> None:
    """The default (no ``prefetch_steps``): nobody else could take them, so it prepares early."""
    queue = InMemoryJobQueue()
    engine = FakeEngine(num_steps=10, step_seconds=0.2)
    worker = start(engine, queue, tmp_path)
    try:
        first, second = make_job(input={"seed": 1}), make_job(input={"seed": 2})
        queue.submit(first)
        wait_until(lambda: engine.calls == [(first.id,)])
        queue.submit(second)
        wait_until(lambda: second.id in worker.held)
        assert len(engine.calls) == 1  # held while the first batch still runs
        wait_until(all_done(queue, [first, second]))
    finally:
        worker.stop(timeout=10)
