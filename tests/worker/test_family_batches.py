"""The worker with the FLUX.2 family: batches never mix regimes, step counts, acceleration levels
or adapter sets, and a bad LoRA fails its own job only (fake engine, in-memory queue)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from worker_helpers import all_done, data_uri, wait_until

from pipelines.fake import FakeEngine
from pipelines.types import CancelCheck, EditRequest, EditResult, StepCallback
from service.endpoints import ENDPOINTS
from service.jobs import Job
from service.loras import LoraPolicy
from service.queue.memory import InMemoryJobQueue
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions
from tests.helpers.loras import write_lora


class BatchRecorder(FakeEngine):
    """The fake engine, keeping every batch the worker handed it."""

    def __init__(self) -> None:
        super().__init__(num_steps=4)
        self.batches: list[tuple[EditRequest, ...]] = []

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        self.batches.append(tuple(batch))
        return super().run(batch, on_step, should_cancel)


def family_job(endpoint_id: str, **fields: Any) -> Job:
    endpoint = ENDPOINTS[endpoint_id]
    body: dict[str, Any] = {"prompt": "a fox", "image_size": "square", "seed": 1, **fields}
    if endpoint.mode == "edit":
        body.setdefault("image_urls", [data_uri()])
    return Job(
        id=str(uuid.uuid4()),
        input=endpoint.input_model.model_validate(body),
        endpoint=endpoint_id,
        base_url="http://test",
    )


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    write_lora(tmp_path / "loras" / "ink.safetensors", seed=1)
    write_lora(tmp_path / "loras" / "film.safetensors", seed=2)
    write_lora(tmp_path / "loras" / "broken.safetensors", keys=("blocks.0.weight",))
    return tmp_path / "loras"


@pytest.fixture
def run_all(tmp_path: Path, lora_dir: Path) -> Iterator[Any]:
    """``run_all(jobs)``: queue the jobs, start a worker that gathers them all, wait; the
    engine and the queue."""
    workers: list[Worker] = []

    def run(jobs: list[Job]) -> tuple[BatchRecorder, InMemoryJobQueue]:
        queue, engine = InMemoryJobQueue(), BatchRecorder()
        for job in jobs:  # all queued before the worker claims
            queue.submit(job)
        options = WorkerOptions(
            warmup=False,
            claim_timeout=0.05,
            batch_window=0.1,
            max_batch_images=len(jobs),
            lora_policy=LoraPolicy(directory=lora_dir, cache_dir=tmp_path / "lora-cache"),
        )
        worker = Worker(lambda: engine, queue, LocalArtifactStore(tmp_path / "files"),
                        options=options)  # fmt: skip
        workers.append(worker)
        worker.start()
        wait_until(all_done(queue, jobs))
        return engine, queue

    yield run
    for worker in workers:
        worker.stop(timeout=10)


def recipe(request: EditRequest) -> tuple[object, ...]:
    return (
        request.regime,
        request.steps,
        request.acceleration,
        tuple((lora.name, lora.scale) for lora in request.loras),
    )


def test_batches_never_mix_regimes_steps_or_adapter_sets(run_all: Any) -> None:
    jobs = [
        family_job("fal-ai/flux-2/flash/edit"),
        family_job("fal-ai/flux-2/flash"),  # same recipe as the flash edit: may share
        family_job("fal-ai/flux-2", num_inference_steps=12),
        family_job("fal-ai/flux-2/edit", num_inference_steps=12),  # may share with the one above
        family_job("fal-ai/flux-2", num_inference_steps=20),
        family_job("fal-ai/flux-2", num_inference_steps=12, acceleration="high"),
        family_job("fal-ai/flux-2/lora", num_inference_steps=12, loras=[{"path": "ink"}]),
        family_job(
            "fal-ai/flux-2/lora/edit", num_inference_steps=12, loras=[{"path": "ink", "scale": 1}]
        ),
        family_job(
            "fal-ai/flux-2/lora", num_inference_steps=12, loras=[{"path": "ink", "scale": 0.5}]
        ),
        family_job(
            "fal-ai/flux-2/lora",
            num_inference_steps=12,
            loras=[{"path": "ink"}, {"path": "film", "scale": 0.8}],
        ),
    ]
    engine, queue = run_all(jobs)
    assert all(queue.view(job.id).outcome.ok for job in jobs)  # type: ignore[union-attr]
    ran = [request for batch in engine.batches for request in batch]
    assert sorted(r.request_id for r in ran) == sorted(job.id for job in jobs)
    for batch in engine.batches:  # what the worker hands the engine is one recipe
        assert len({recipe(request) for request in batch}) == 1, [recipe(r) for r in batch]
    recipes = {recipe(r) for r in ran}
    assert len(recipes) == 7  # flash+flash/edit, 12, 20, 12/high, ink, ink@0.5, ink+film
    by_id = {r.request_id: r for r in ran}
    two = by_id[jobs[-1].id]
    assert [(lora.path.name, lora.scale) for lora in two.loras] == [
        ("ink.safetensors", 1.0),
        ("film.safetensors", 0.8),
    ]
    assert by_id[jobs[6].id].loras == by_id[jobs[7].id].loras  # same file, same name: shareable


def test_a_bad_lora_fails_only_its_own_job(run_all: Any) -> None:
    good = [
        family_job("fal-ai/flux-2/lora/edit", num_inference_steps=8, loras=[{"path": "ink"}])
        for _ in range(3)
    ]
    bad = family_job(
        "fal-ai/flux-2/lora/edit",
        num_inference_steps=8,
        loras=[{"path": "ink"}, {"path": "broken"}],
    )
    missing = family_job("fal-ai/flux-2/lora", loras=[{"path": "https://127.0.0.1:1/x"}])
    jobs = [good[0], bad, good[1], missing, good[2]]
    engine, queue = run_all(jobs)
    for job, index in ((bad, 1), (missing, 0)):
        outcome = queue.view(job.id).outcome  # type: ignore[union-attr]
        assert outcome is not None and outcome.status_code == 422
        (problem,) = outcome.body["detail"]
        assert problem["loc"] == ["body", "loras", index, "path"]
    assert outcome.error_type == "file_download_error"
    bad_outcome = queue.view(bad.id).outcome  # type: ignore[union-attr]
    assert bad_outcome is not None and bad_outcome.error_type == "lora_load_error"
    for job in good:
        assert queue.view(job.id).outcome.ok  # type: ignore[union-attr]
    # claimed in the same round as the good ones, the bad ones never reached the engine; the
    # good ones ran as if they had never been there (together, unless one prepared late)
    ran = [r.request_id for b in engine.batches for r in b]
    assert sorted(ran) == sorted(job.id for job in good)
    assert len(engine.batches) < len(good)
