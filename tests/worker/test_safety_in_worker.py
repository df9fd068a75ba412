"""The safety checker in the worker: flagged images come back black and flagged, fail closed."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from worker_helpers import all_done, make_job, wait_until

from core.errors import WeightsError
from pipelines.fake import FakeEngine
from pipelines.safety import AlwaysFlagChecker, NeverFlagChecker, SafetyChecker
from service.queue.memory import InMemoryJobQueue
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions, WorkerState


class OutputOnlyFlagger(AlwaysFlagChecker):
    """Flags only what the engine made (the fake engine's images are 512 px wide)."""

    def check(self, images):  # type: ignore[no-untyped-def]
        verdicts = super().check(images)
        return [
            v if image.width == 512 else type(v)(False, 0.0)
            for v, image in zip(verdicts, images, strict=True)
        ]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[dict[str, object]]:
    made: dict[str, object] = {}

    def start(checker: SafetyChecker | None, **options: object) -> tuple[Worker, FakeEngine]:
        engine = FakeEngine()
        worker = Worker(
            lambda: engine,
            made.setdefault("queue", InMemoryJobQueue()),  # type: ignore[arg-type]
            LocalArtifactStore(tmp_path / "files"),
            options=WorkerOptions(warmup=False, claim_timeout=0.05, **options),  # type: ignore[arg-type]
            safety_factory=(lambda: checker) if checker is not None else None,
        )
        worker.start()
        made["worker"] = worker
        return worker, engine

    made["start"] = start
    yield made
    worker = made.get("worker")
    if isinstance(worker, Worker):
        worker.stop(timeout=10)


def run_one(setup: dict[str, object], checker: SafetyChecker | None, **fields: object) -> dict:  # type: ignore[type-arg]
    _, engine = setup["start"](checker, **fields.pop("options", {}))  # type: ignore[operator]
    queue: InMemoryJobQueue = setup["queue"]  # type: ignore[assignment]
    job = make_job(input={"num_images": 2, "sync_mode": True, **fields})
    queue.submit(job)
    wait_until(all_done(queue, [job]))
    view = queue.view(job.id)
    assert view is not None
    assert view.outcome is not None
    return {"body": view.outcome.body, "calls": engine.calls, "logs": view.logs}


def decode(url: str) -> np.ndarray:
    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_flagged_outputs_are_black_and_flagged(setup: dict[str, object]) -> None:
    out = run_one(setup, OutputOnlyFlagger())
    assert out["body"]["has_nsfw_concepts"] == [True, True]
    for image in out["body"]["images"]:
        assert decode(image["url"]).max() == 0
    assert len(out["calls"]) == 1  # the engine ran: inputs were clean


def test_clean_outputs_pass_through(setup: dict[str, object]) -> None:
    out = run_one(setup, NeverFlagChecker())
    assert out["body"]["has_nsfw_concepts"] == [False, False]
    assert decode(out["body"]["images"][0]["url"]).max() > 0


def test_a_flagged_input_skips_the_model(setup: dict[str, object]) -> None:
    out = run_one(setup, AlwaysFlagChecker())
    assert out["calls"] == []
    assert out["body"]["has_nsfw_concepts"] == [True, True]
    assert all(decode(i["url"]).max() == 0 for i in out["body"]["images"])
    assert any("Input flagged" in entry.message for entry in out["logs"])


def test_disabling_the_checker_needs_the_operator(setup: dict[str, object]) -> None:
    out = run_one(setup, AlwaysFlagChecker(), enable_safety_checker=False)
    assert out["body"]["has_nsfw_concepts"] == [True, True]  # not allowed: checked anyway


def test_the_operator_may_allow_disabling_it(setup: dict[str, object]) -> None:
    out = run_one(
        setup,
        AlwaysFlagChecker(),
        enable_safety_checker=False,
        options={"allow_disable_safety": True},
    )
    assert out["body"]["has_nsfw_concepts"] == [False, False]
    assert len(out["calls"]) == 1


class BrokenChecker(NeverFlagChecker):
    def load(self) -> None:
        raise WeightsError("the NSFW model is missing")


def test_a_checker_that_cannot_load_stops_the_worker(setup: dict[str, object]) -> None:
    worker, _ = setup["start"](BrokenChecker())  # type: ignore[operator]
    wait_until(lambda: worker.state is not WorkerState.STARTING)
    assert worker.state is WorkerState.SETUP_FAILED
    assert "NSFW model is missing" in (worker.error or "")
