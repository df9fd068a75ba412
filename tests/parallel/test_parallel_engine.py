"""One request on two CPU ranks (gloo) gives the one-process engine's pixels (tiny checkpoint).

Ulysses and tensor parallelism each run the same edits as :class:`Flux2Engine` at 512x512, with
one and with two references per request and a batch of two different requests, within one
pixel level (kernels block differently in other shapes; diffusers' split is exact otherwise).
The reference sizes give token counts two does not divide (1,087 and 1,143), the uneven case of
Ulysses. Then, on the Ulysses group: cancelling one request of a batch, an error before the
denoising that leaves the group usable, and a killed rank that brings the group down.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidRequest, WorkerDead
from pipelines.flux2 import Flux2Engine, Flux2EngineConfig
from pipelines.layout import parse_layout
from pipelines.parallel import ParallelEngine
from pipelines.schedules import parse_schedule
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest, EditResult, StepEvent

pytestmark = pytest.mark.slow

SIZE = ImageSize(512, 512)


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@pytest.fixture(scope="module")
def config(tiny_checkpoint: Path) -> Flux2EngineConfig:
    """Two steps, references resized to about 128x128: a 512x512 edit in about a second."""
    return Flux2EngineConfig(
        model_path=tiny_checkpoint,
        device="cpu",
        schedule=parse_schedule("1.0,0.5"),
        reference_pixels=128 * 128,
    )


@pytest.fixture(scope="module")
def single(config: Flux2EngineConfig) -> Flux2Engine:
    engine = Flux2Engine(config)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def expected(single: Flux2Engine) -> dict[str, list[EditResult]]:
    """The one-process engine's results, computed once for every group."""
    return {name: single.run(batch) for name, batch in BATCHES.items()}


def start(config: Flux2EngineConfig, layout: str) -> ParallelEngine:
    spec = parse_layout(layout)
    assert spec is not None
    engine = ParallelEngine(config, spec, collective_timeout_s=60)
    engine.load()
    return engine


@pytest.fixture(scope="module", params=["ulysses:2", "tp:2"])
def group(request: pytest.FixtureRequest, config: Flux2EngineConfig) -> Iterator[ParallelEngine]:
    engine = start(config, request.param)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def ulysses(config: Flux2EngineConfig) -> Iterator[ParallelEngine]:
    engine = start(config, "ulysses:2")
    yield engine
    engine.close()


ONE_REFERENCE = [EditRequest("one", "a red car", (noise(112, 144, 1),), SIZE, seed=11)]
TWO_REQUESTS = [
    EditRequest("a", "a red car", (noise(128, 128, 2), noise(176, 80, 3)), SIZE, seed=21),
    EditRequest(
        "b", "a blue boat", (noise(128, 128, 4), noise(176, 80, 5)), SIZE, seed=99,
        guidance_scale=4.0,
    ),
]  # fmt: skip


BATCHES = {"1-ref": ONE_REFERENCE, "2-requests-2-refs": TWO_REQUESTS}


def assert_same_pixels(expected: list[EditResult], got: list[EditResult]) -> None:
    assert [r.request_id for r in got] == [r.request_id for r in expected]
    for want, have in zip(expected, got, strict=True):
        assert len(have.images) == len(want.images) == 1
        assert have.images[0].size == (SIZE.width, SIZE.height)
        assert max_diff(want.images[0], have.images[0]) <= 1, want.request_id


@pytest.mark.parametrize("name", list(BATCHES))
def test_the_group_gives_the_one_process_pixels(
    expected: dict[str, list[EditResult]], group: ParallelEngine, name: str
) -> None:
    batch = BATCHES[name]
    events: list[StepEvent] = []
    got = group.run(batch, on_step=events.append)
    assert_same_pixels(expected[name], got)
    ids = tuple(r.request_id for r in batch)
    assert events == [StepEvent(1, 2, ids), StepEvent(2, 2, ids)]
    # The two requests differ, so a rank that mixed them up could not pass.
    if len(batch) == 2:
        assert max_diff(got[0].images[0], got[1].images[0]) > 10


def test_cancelling_one_request_of_a_parallel_batch(
    single: Flux2Engine, ulysses: ParallelEngine
) -> None:
    def run(engine: Flux2Engine | ParallelEngine) -> tuple[list[EditResult], list[StepEvent]]:
        events: list[StepEvent] = []
        results = engine.run(
            TWO_REQUESTS,
            on_step=events.append,
            should_cancel=lambda request_id: request_id == "b" and len(events) >= 1,
        )
        return results, events

    expected, _ = run(single)
    got, events = run(ulysses)
    assert events == [StepEvent(1, 2, ("a", "b")), StepEvent(2, 2, ("a",))]
    assert got[1].cancelled and got[1].images == ()
    assert not got[0].cancelled
    assert max_diff(expected[0].images[0], got[0].images[0]) <= 1


def test_an_error_before_the_denoising_leaves_the_group_usable(
    expected: dict[str, list[EditResult]], ulysses: ParallelEngine
) -> None:
    unusable = EditRequest("bad", "x", (Image.new("RGB", (64, 8)),), SIZE, seed=1)  # 8:1
    with pytest.raises(InvalidRequest):
        ulysses.run([unusable])
    assert_same_pixels(expected["1-ref"], ulysses.run(ONE_REFERENCE))


def test_a_killed_rank_brings_the_group_down(config: Flux2EngineConfig) -> None:
    engine = start(config, "ulysses:2")
    pids = engine.pids

    def kill_rank_1(event: StepEvent) -> None:
        os.kill(pids[1], signal.SIGKILL)

    try:
        with pytest.raises(WorkerDead, match=r"rank 1 \(pid \d+\) killed by SIGKILL"):
            engine.run(ONE_REFERENCE, on_step=kill_rank_1)
        with pytest.raises(WorkerDead, match="is down"):  # and it stays down
            engine.run(ONE_REFERENCE)
        for pid in pids:  # rank 0 was ended too
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        engine.close()


def test_ranks_count_their_work_and_time_their_collectives(ulysses: ParallelEngine) -> None:
    small = EditRequest("s", "a red car", (noise(112, 144, 1),), ImageSize(64, 64), seed=1)
    before = ulysses.rank_stats()
    ulysses.set_profiling(True)
    try:
        ulysses.run([small])
    finally:
        ulysses.set_profiling(False)
    after = ulysses.rank_stats()
    assert [s["rank"] for s in after] == [0, 1]
    assert [s["pid"] for s in after] == ulysses.pids
    for old, new in zip(before, after, strict=True):
        assert new["steps"] - old["steps"] == 2
        assert new["denoise_s"] > old["denoise_s"]
        assert 0 < new["comm_s"] - old["comm_s"] < new["denoise_s"] - old["denoise_s"]
        assert new["bytes_shared"] > old["bytes_shared"]  # the batch went to every rank


def test_text_to_image_and_the_base_regime_run_on_the_group(
    single: Flux2Engine, ulysses: ParallelEngine
) -> None:
    batch = [
        EditRequest("t2i", "a red car", (), ImageSize(128, 128), seed=3),
        EditRequest("base", "a red car", (noise(112, 144, 1),), ImageSize(128, 128), seed=4,
                    regime="base", steps=3, acceleration="none"),
    ]  # fmt: skip
    for want, have in zip(single.run(batch), ulysses.run(batch), strict=True):
        assert max_diff(want.images[0], have.images[0]) <= 1, want.request_id


def test_what_a_group_cannot_run_is_refused_cleanly(
    ulysses: ParallelEngine, tmp_path: Path
) -> None:
    from pipelines.types import LoraWeights

    lora = LoraWeights("ab" * 32, tmp_path / "style.safetensors")
    with pytest.raises(InvalidRequest, match="LoRAs are not served"):
        ulysses.check_lora(lora)
    with pytest.raises(InvalidRequest, match="LoRAs are not served"):
        ulysses.run([EditRequest("l", "x", (), SIZE, seed=1, regime="base", loras=(lora,))])
    with pytest.raises(InvalidRequest, match="'high'") as caught:
        ulysses.run([EditRequest("h", "x", (), SIZE, seed=1, regime="base", acceleration="high")])
    assert caught.value.problems[0].loc == ("body", "acceleration")
    assert ulysses.adapter_cache_stats() is None


def test_a_group_refuses_to_serve_both_regimes_with_a_turbo_lora(
    config: Flux2EngineConfig, tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    from core.errors import ConfigError
    from weights.loras import build_tiny_turbo_lora

    model = tmp_path / "FLUX.2-dev"
    shutil.copytree(config.model_path, model)
    build_tiny_turbo_lora(model)
    spec = parse_layout("ulysses:2")
    assert spec is not None
    both = ParallelEngine(dataclasses.replace(config, model_path=model), spec)
    with pytest.raises(ConfigError, match="either the flash/turbo endpoints"):
        both.load()
    assert both.pids == []  # refused before any rank started
