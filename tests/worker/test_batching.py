"""The worker's batching, failure isolation, deadlines and drain (fake engine, in-memory queue)."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from PIL import Image
from worker_helpers import all_done, data_uri, make_job, wait_until, webhook_receiver

from core.errors import OutOfMemory
from pipelines.fake import FakeEngine
from pipelines.types import CancelCheck, EditRequest, EditResult, StepCallback, StepEvent
from service.guard import webhook_policy
from service.jobs import JobStatus
from service.queue.memory import InMemoryJobQueue
from service.storage.local import LocalArtifactStore
from service.webhooks import WebhookSender
from service.worker import Worker, WorkerOptions


class RecordingEngine(FakeEngine):
    """The fake engine, recording the shapes of every call; can fail on demand."""

    def __init__(self, *, fail: type[Exception] | None = None, max_ok: int = 99, **kw: object):
        super().__init__(**kw)  # type: ignore[arg-type]
        self.fail = fail
        self.max_ok = max_ok  # requests per call above which `fail` is raised
        self.shapes: list[list[tuple[int, int]]] = []
        self.requests: list[EditRequest] = []

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        self.shapes.append([(r.size.width, r.size.height) for r in batch])
        self.requests += batch
        if self.fail is not None and len(batch) > self.max_ok:
            raise self.fail("CUDA error: out of memory")
        return super().run(batch, on_step, should_cancel)


@pytest.fixture
def queue() -> InMemoryJobQueue:
    return InMemoryJobQueue()


def start_worker(
    engine: FakeEngine, queue: InMemoryJobQueue, tmp_path: Path, **options: object
) -> Worker:
    settings = {"warmup": False, "claim_timeout": 0.05, "batch_window": 0.2, **options}
    worker = Worker(
        lambda: engine,
        queue,
        LocalArtifactStore(tmp_path / "files"),
        options=WorkerOptions(**settings),  # type: ignore[arg-type]
    )
    worker.start()
    return worker


@pytest.fixture
def running(queue: InMemoryJobQueue, tmp_path: Path) -> Iterator[dict[str, object]]:
    holder: dict[str, object] = {}
    yield holder
    worker = holder.get("worker")
    if isinstance(worker, Worker):
        worker.stop(timeout=10)


def test_compatible_jobs_share_engine_calls(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    jobs = [make_job(input={"seed": i}) for i in range(8)]
    for job in jobs:  # all queued before the worker starts claiming
        queue.submit(job)
    engine = RecordingEngine()
    running["worker"] = start_worker(engine, queue, tmp_path, max_batch_images=4)
    wait_until(all_done(queue, jobs))
    assert len(engine.shapes) < len(jobs)
    assert max(len(call) for call in engine.shapes) == 4
    assert all(queue.view(j.id).outcome.ok for j in jobs)  # type: ignore[union-attr]


class SteppingEngine(RecordingEngine):
    """Runs its first batch only as far as its first step, until ``release()``."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.in_first_step = threading.Event()
        self._go = threading.Event()

    def release(self) -> None:
        self._go.set()

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        def gated(event: StepEvent) -> None:
            if on_step is not None:
                on_step(event)
            if not self._go.is_set():
                self.in_first_step.set()
                assert self._go.wait(30), "the test never released the engine"

        return super().run(batch, gated, should_cancel)


def test_jobs_arriving_while_the_gpu_is_busy_join_the_next_batch(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    """No window at all, yet the jobs that come in during a batch run together next."""
    engine = SteppingEngine(num_steps=4)
    worker = start_worker(engine, queue, tmp_path, max_batch_images=4, batch_window=0.0)
    running["worker"] = worker
    first = make_job(input={"seed": 0})
    queue.submit(first)
    assert engine.in_first_step.wait(10)  # the GPU is busy with the first job
    later = [make_job(input={"seed": seed}) for seed in (1, 2, 3)]
    for job in later:
        queue.submit(job)
    wait_until(lambda: {job.id for job in later} <= worker.held)  # claimed while busy
    engine.release()
    wait_until(all_done(queue, [first, *later]))
    assert [len(call) for call in engine.shapes] == [1, 3]
    assert engine.calls[1] == tuple(job.id for job in later)


def test_an_idle_gpu_does_not_wait_past_the_window(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    engine = RecordingEngine()
    running["worker"] = start_worker(engine, queue, tmp_path, max_batch_images=4, batch_window=0.05)
    first, second = make_job(input={"seed": 0}), make_job(input={"seed": 1})
    queue.submit(first)
    wait_until(all_done(queue, [first]))
    queue.submit(second)  # after the first batch ran: never joins it
    wait_until(all_done(queue, [second]))
    assert engine.calls == [(first.id,), (second.id,)]


def test_a_job_arriving_within_the_window_joins_an_idle_gpus_batch(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    engine = RecordingEngine()
    running["worker"] = start_worker(engine, queue, tmp_path, max_batch_images=4, batch_window=1.0)
    first, second = make_job(input={"seed": 0}), make_job(input={"seed": 1})
    queue.submit(first)
    time.sleep(0.2)
    queue.submit(second)
    wait_until(all_done(queue, [first, second]))
    assert engine.calls == [(first.id, second.id)]


def test_references_reach_the_engine_already_resized(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    """Resizing happens on the prepare threads, not on the GPU thread inside the engine."""
    pixels = 128 * 128
    job = make_job(input={"image_urls": [data_uri(300, 200), data_uri(64, 256)]})
    queue.submit(job)
    engine = RecordingEngine(reference_pixels=pixels)
    running["worker"] = start_worker(engine, queue, tmp_path, reference_pixels=pixels)
    wait_until(all_done(queue, [job]))
    (seen,) = engine.requests
    assert seen.prepared_for == pixels
    assert [image.size for image in seen.images] == [(144, 96), (64, 256)]
    assert all(image.mode == "RGB" for image in seen.images)


def test_num_images_counts_towards_the_batch_limit(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    jobs = [make_job(input={"num_images": 3, "seed": i}) for i in range(3)]
    for job in jobs:
        queue.submit(job)
    engine = RecordingEngine()
    running["worker"] = start_worker(engine, queue, tmp_path, max_batch_images=4)
    wait_until(all_done(queue, jobs))
    assert [len(call) for call in engine.shapes] == [1, 1, 1]  # 3 + 3 > 4


def test_incompatible_jobs_are_never_mixed(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    sizes = ["square", "square_hd", "square", "landscape_4_3", "square", "square_hd"]
    jobs = [make_job(input={"image_size": size, "seed": i}) for i, size in enumerate(sizes)]
    for job in jobs:
        queue.submit(job)
    engine = RecordingEngine()
    running["worker"] = start_worker(engine, queue, tmp_path, max_batch_images=8)
    wait_until(all_done(queue, jobs))
    for call in engine.shapes:
        assert len(set(call)) == 1, f"mixed shapes in one engine call: {call}"
    assert sum(len(call) for call in engine.shapes) == len(jobs)
    # references of different sizes are different shapes too
    refs = [make_job(input={"image_urls": [data_uri(64 * (1 + i % 2), 64)]}) for i in range(4)]
    for job in refs:
        queue.submit(job)
    wait_until(all_done(queue, refs))
    assert all(queue.view(j.id).outcome.ok for j in refs)  # type: ignore[union-attr]


def test_out_of_memory_splits_the_batch_and_everyone_finishes(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    jobs = [make_job(input={"seed": i}) for i in range(4)]
    for job in jobs:
        queue.submit(job)
    engine = RecordingEngine(fail=OutOfMemory, max_ok=1)
    running["worker"] = start_worker(engine, queue, tmp_path, max_batch_images=4)
    wait_until(all_done(queue, jobs))
    assert all(queue.view(j.id).outcome.ok for j in jobs)  # type: ignore[union-attr]
    assert engine.shapes[0] == [(512, 512)] * 4  # tried together first
    assert sorted(len(c) for c in engine.shapes) == [1, 1, 1, 1, 2, 2, 4]


def test_a_job_that_cannot_fit_fails_alone_and_the_worker_goes_on(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    engine = RecordingEngine(fail=OutOfMemory, max_ok=0)
    running["worker"] = start_worker(engine, queue, tmp_path, max_batch_images=1)
    doomed = make_job()
    queue.submit(doomed)
    wait_until(all_done(queue, [doomed]))
    outcome = queue.view(doomed.id).outcome  # type: ignore[union-attr]
    assert outcome is not None
    assert outcome.status_code == 503
    assert "out of memory" in outcome.body["detail"]
    engine.fail = None
    survivor = make_job()
    queue.submit(survivor)
    wait_until(all_done(queue, [survivor]))
    assert queue.view(survivor.id).outcome.ok  # type: ignore[union-attr]


def test_any_other_engine_error_fails_that_batch_only(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    engine = RecordingEngine(fail=RuntimeError, max_ok=0)
    running["worker"] = start_worker(engine, queue, tmp_path)
    broken = make_job()
    queue.submit(broken)
    wait_until(all_done(queue, [broken]))
    outcome = queue.view(broken.id).outcome  # type: ignore[union-attr]
    assert outcome is not None
    assert outcome.status_code == 500
    assert outcome.error_type == "internal_server_error"
    engine.fail = None
    fine = make_job()
    queue.submit(fine)
    wait_until(all_done(queue, [fine]))
    assert queue.view(fine.id).outcome.ok  # type: ignore[union-attr]


def test_a_job_past_its_start_deadline_times_out_like_fal(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    late = make_job(start_deadline=time.time() - 1)
    queue.submit(late)
    running["worker"] = start_worker(RecordingEngine(), queue, tmp_path)
    wait_until(all_done(queue, [late]))
    outcome = queue.view(late.id).outcome  # type: ignore[union-attr]
    assert outcome is not None
    assert outcome.status_code == 504
    assert outcome.body == {"detail": "Request timed out", "error_type": "request_timeout"}
    assert outcome.headers == {"X-Fal-Request-Timeout-Type": "user"}


def test_cancel_a_running_job_stops_within_one_step(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    engine = RecordingEngine(num_steps=8, step_seconds=0.1)
    running["worker"] = start_worker(engine, queue, tmp_path)
    job = make_job()
    queue.submit(job)
    wait_until(lambda: any("step 2/8" in e.message for e in queue.view(job.id).logs))  # type: ignore[union-attr]
    queue.cancel(job.id)
    wait_until(all_done(queue, [job]))
    view = queue.view(job.id)
    assert view is not None
    assert view.outcome is not None
    assert view.outcome.error_type == "client_cancelled"
    steps = [e.message for e in view.logs if e.message.startswith("step ")]
    assert len(steps) <= 4  # asked during step 2 or 3: at most one more step ran


def test_stop_drains_the_running_batch_and_leaves_the_rest_queued(
    queue: InMemoryJobQueue, tmp_path: Path
) -> None:
    engine = RecordingEngine(num_steps=8, step_seconds=0.05)
    worker = start_worker(engine, queue, tmp_path, max_batch_images=1)
    first = make_job()
    queue.submit(first)
    wait_until(lambda: any("step 1/8" in e.message for e in queue.view(first.id).logs))  # type: ignore[union-attr]
    rest = [make_job() for _ in range(3)]
    for job in rest:
        queue.submit(job)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    stopper.join(timeout=20)
    view = queue.view(first.id)
    assert view is not None
    assert view.status is JobStatus.COMPLETED
    assert view.outcome is not None
    assert view.outcome.ok
    states = [queue.view(job.id).status for job in rest]  # type: ignore[union-attr]
    assert states == [JobStatus.IN_QUEUE] * 3
    assert worker.held == set()


def test_a_job_cancelled_while_held_gets_its_webhook_when_released(
    queue: InMemoryJobQueue, tmp_path: Path
) -> None:
    """Claimed and prepared, waiting for the GPU, cancelled, then handed back on drain: the
    queue would complete it silently; the worker completes it and sends its webhook."""
    engine = RecordingEngine(num_steps=20, step_seconds=0.05)
    sender = WebhookSender(attempts=3, backoff=0.05, timeout=5, policy=webhook_policy("127.0.0.1"))
    with webhook_receiver() as (url, received):
        worker = Worker(
            lambda: engine,
            queue,
            LocalArtifactStore(tmp_path / "files"),
            webhooks=sender,
            options=WorkerOptions(warmup=False, claim_timeout=0.05, max_batch_images=1),
        )
        worker.start()
        try:
            first, waiting = make_job(), make_job(webhook_url=url)
            queue.submit(first)
            wait_until(lambda: len(engine.calls) == 1)
            queue.submit(waiting)
            wait_until(lambda: waiting.id in worker.held)  # claimed while the GPU is busy
            queue.cancel(waiting.id)
            worker.stop(timeout=20)
            wait_until(lambda: len(received) == 1)
        finally:
            worker.stop(timeout=5)
            sender.close()
    assert engine.calls == [(first.id,)]  # the cancelled job never ran
    [body] = received
    assert body["request_id"] == waiting.id
    assert body["status"] == "ERROR"
    assert body["payload"]["error_type"] == "client_cancelled"
    view = queue.view(waiting.id)
    assert view is not None and view.outcome is not None and view.outcome.status_code == 499


def test_the_images_of_a_job_come_back_in_order(
    queue: InMemoryJobQueue, tmp_path: Path, running: dict[str, object]
) -> None:
    """A job's images are encoded and stored in parallel; image k must still be seed + k."""
    store = LocalArtifactStore(tmp_path / "files")
    worker = Worker(
        FakeEngine,
        queue,
        store,
        options=WorkerOptions(warmup=False, claim_timeout=0.05, encode_threads=4),
    )
    running["worker"] = worker
    worker.start()
    job = make_job(input={"num_images": 4, "seed": 10, "output_format": "png"})
    queue.submit(job)
    wait_until(all_done(queue, [job]))
    outcome = queue.view(job.id).outcome  # type: ignore[union-attr]
    assert outcome is not None and outcome.ok
    assert job.input is not None
    prompt = job.input.prompt
    for k, file in enumerate(outcome.body["images"]):
        key = file["url"].split("/files/", 1)[1]
        image = Image.open(io.BytesIO(store.open(key).data))
        digest = hashlib.sha256(f"{prompt}\0{10 + k}".encode()).digest()
        assert image.getpixel((0, 0)) == tuple(digest[3:6])  # the fake engine's mark of seed+k
