"""The embedded worker as the HTTP layer sees it: batching, logs, failures, cancel, drain."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service_helpers import (
    SUBMIT_PATH,
    MakeService,
    edit_body,
    step_messages,
    wait_for,
)
from starlette.testclient import TestClient

from pipelines.fake import FakeEngine
from pipelines.types import CancelCheck, EditRequest, EditResult, StepCallback
from service.app import create_app
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions, WorkerState


class ExplodingEngine(FakeEngine):
    """Fails any batch that holds a prompt containing ``explode``."""

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        if any("explode" in request.prompt for request in batch):
            raise RuntimeError("kaboom")
        return super().run(batch, on_step, should_cancel)


def test_compatible_jobs_share_a_batch(make_service: MakeService) -> None:
    # A long window: the batch goes when it is full (3 images), not when a busy CPU lets the
    # window lapse between two claims.
    svc = make_service(gated=True, max_batch_images=3, batch_window=30.0)
    ids = [svc.submit(edit_body(seed=k)) for k in range(3)]
    svc.gate.open()  # type: ignore[union-attr]
    for request_id in ids:
        svc.wait_status(request_id)
    assert svc.gate.engine.calls == [tuple(ids)]  # type: ignore[union-attr]
    for k, request_id in enumerate(ids):
        result = svc.result(request_id).json()
        assert result["seed"] == k
        messages = [entry["message"] for entry in svc.logs(request_id)]
        assert messages[0] == "Preparing inputs"
        assert f"Running FLUX.2 on {svc.worker.name} (batch of 3)" in messages
        assert step_messages(svc.logs(request_id)) == [f"step {s}/4" for s in range(1, 5)]
        assert messages[-1] == "Completed"


def test_batches_respect_shapes_and_image_budget(make_service: MakeService) -> None:
    svc = make_service(gated=True, max_batch_images=4)
    square = svc.submit(edit_body(num_images=3))
    wide = svc.submit(edit_body(image_size="landscape_16_9"))  # another shape
    big = svc.submit(edit_body(num_images=2))  # over the image budget with the first
    svc.gate.open()  # type: ignore[union-attr]
    for request_id in (square, wide, big):
        svc.wait_status(request_id)
        assert svc.result(request_id).status_code == 200
    calls = svc.gate.engine.calls  # type: ignore[union-attr]
    assert sorted(calls) == sorted([(square,), (wide,), (big,)])
    assert calls[0] == (square,)  # the oldest job goes first
    assert len(svc.result(square).json()["images"]) == 3
    wide_image = svc.result(wide).json()["images"][0]
    assert (wide_image["width"], wide_image["height"]) == (1024, 576)


def test_engine_failure_fails_the_batch_not_the_worker(make_service: MakeService) -> None:
    svc = make_service(engine_factory=ExplodingEngine)
    failed = svc.submit(edit_body(prompt="please explode"))
    status = svc.wait_status(failed)
    assert status["error_type"] == "internal_server_error"
    result = svc.result(failed)
    assert result.status_code == 500
    assert result.headers["x-fal-error-type"] == "internal_server_error"
    assert "kaboom" in result.json()["detail"]
    assert result.json()["error_type"] == "internal_server_error"
    fine = svc.submit()
    svc.wait_status(fine)
    assert svc.result(fine).status_code == 200
    assert svc.client.get("/ready").status_code == 200


def test_cancel_job_waiting_for_the_gpu(make_service: MakeService) -> None:
    """A job the feeder already claimed (IN_PROGRESS, not yet running) is cancelled before it
    reaches the engine."""
    svc = make_service(num_steps=20, step_seconds=0.05, max_batch_images=1)
    running = svc.submit()
    waiting = svc.submit()
    wait_for(lambda: step_messages(svc.logs(running)), what="the first job's steps")
    wait_for(
        lambda: svc.status(waiting).json()["status"] == "IN_PROGRESS", what="prefetch of job 2"
    )
    assert svc.cancel(waiting).status_code == 202
    assert svc.cancel(running).status_code == 202
    for request_id in (running, waiting):
        status = svc.wait_status(request_id, logs="1", timeout=1.5)
        assert status["error_type"] == "client_cancelled"
    assert step_messages(svc.logs(waiting)) == []
    assert all(waiting not in call for call in svc.gate.engine.calls)  # type: ignore[union-attr]
    assert svc.result(waiting).status_code == 499


def test_shutdown_drains(tmp_path: Path) -> None:
    """Leaving the app finishes the running job and leaves the others queued (not lost)."""
    queue = InMemoryJobQueue()
    store = LocalArtifactStore(tmp_path / "files")
    engine = FakeEngine(num_steps=10, step_seconds=0.03)
    options = WorkerOptions(warmup=False, claim_timeout=0.05, max_batch_images=1)
    worker = Worker(lambda: engine, queue, store, options=options)
    app = create_app(Settings(cache_dir=tmp_path), queue=queue, store=store, worker=worker)
    with TestClient(app) as client:
        ids = [client.post(SUBMIT_PATH, json=edit_body()).json()["request_id"] for _ in range(4)]
        wait_for(lambda: engine.calls, what="the first engine call")
    assert worker.state is WorkerState.DRAINING  # stopped cleanly: neither failed nor defunct
    assert not worker.held  # everything claimed was completed or given back
    views = [queue.view(request_id) for request_id in ids]
    assert all(view is not None for view in views)
    first = views[0]
    assert first is not None and first.status.value == "COMPLETED"
    assert first.outcome is not None and first.outcome.ok
    ran = {request_id for call in engine.calls for request_id in call}
    for request_id, view in zip(ids, views, strict=True):
        assert view is not None
        if request_id in ran:
            assert view.status.value == "COMPLETED"
        else:
            assert view.status.value == "IN_QUEUE"  # released for another worker
