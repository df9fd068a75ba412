"""The ``EditEngine`` contract (pipelines/protocol.py), on every engine: the fake one, the real
FLUX.2 engine on the tiny checkpoint (CPU) and the same on a parallel group of two CPU ranks.

What the worker relies on: one progress event per step naming the requests still running,
cancellation before any step (a cancelled request comes back without images, the others go on),
image *k* drawn from ``seed + k``, a request's pixels not depending on what else shares its
batch, one result per request in order, and unusable references refused before any step.
Pixels are compared within one level: the real engine's kernels block differently for other
batch shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidRequest
from pipelines.fake import FakeEngine
from pipelines.protocol import EditEngine
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest, StepEvent, preview_size, preview_steps

REFERENCE_PIXELS = 128 * 128
STEPS = 4


@pytest.fixture(
    scope="module",
    params=[
        "fake",
        pytest.param("flux2-tiny", marks=pytest.mark.slow),
        pytest.param("flux2-tiny-ulysses-2", marks=pytest.mark.slow),
    ],
)
def engine(request: pytest.FixtureRequest) -> Iterator[EditEngine]:
    if request.param == "fake":
        yield FakeEngine(num_steps=STEPS, reference_pixels=REFERENCE_PIXELS)
        return
    from pipelines.flux2 import Flux2Engine, Flux2EngineConfig
    from pipelines.layout import ParallelLayout
    from pipelines.parallel import ParallelEngine
    from pipelines.schedules import parse_schedule

    checkpoint: Path = request.getfixturevalue("tiny_checkpoint")
    config = Flux2EngineConfig(
        model_path=checkpoint,
        reference_pixels=REFERENCE_PIXELS,
        schedule=parse_schedule("1.0,0.75,0.5,0.25"),
    )
    if request.param == "flux2-tiny":
        flux2 = Flux2Engine(config)
        flux2.load()
        yield flux2
        return
    on_cpu = dataclasses.replace(config, device="cpu")
    group = ParallelEngine(on_cpu, ParallelLayout("ulysses", 2))  # two CPU ranks on gloo
    group.load()
    yield group
    group.close()


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def edit(request_id: str, **fields: object) -> EditRequest:
    values: dict[str, object] = {
        "request_id": request_id,
        "prompt": "make the car #FF5733",
        "images": (noise(96, 80, 1),),
        "size": ImageSize(96, 64),
        "seed": 7,
    }
    values.update(fields)
    return EditRequest(**values)  # type: ignore[arg-type]


def max_diff(a: Image.Image, b: Image.Image) -> int:
    pa = np.asarray(a.convert("RGB")).astype(np.int16)
    pb = np.asarray(b.convert("RGB")).astype(np.int16)
    return int(np.abs(pa - pb).max())


def test_is_an_edit_engine(engine: EditEngine) -> None:
    assert isinstance(engine, EditEngine)
    assert engine.num_steps == STEPS


def test_one_result_per_request_in_order_with_the_images_asked_for(engine: EditEngine) -> None:
    results = engine.run([edit("a", num_images=2), edit("b", size=ImageSize(64, 80))])
    assert [r.request_id for r in results] == ["a", "b"]
    assert [len(r.images) for r in results] == [2, 1]
    assert {image.size for image in results[0].images} == {(96, 64)}
    assert results[1].images[0].size == (64, 80)
    assert not any(r.cancelled for r in results)
    assert all(r.timings.get("inference", -1) >= 0 for r in results)


def test_one_progress_event_per_step_naming_the_batch(engine: EditEngine) -> None:
    events: list[StepEvent] = []
    engine.run([edit("p1"), edit("p2", seed=8)], on_step=events.append)
    assert [(e.step, e.total) for e in events] == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert all(e.request_ids == ("p1", "p2") for e in events)


def test_previews_come_at_their_steps_and_change_nothing(engine: EditEngine) -> None:
    """A request asking for previews gets them at the steps ``preview_steps`` picks (none at
    the last step), each a small RGB picture; its images, and its batch neighbours', are what
    they are without previews, and a batch that asked for none carries none."""
    events: list[StepEvent] = []
    asked = [edit("p", num_images=2, previews=2), edit("q", seed=8)]
    shown = engine.run(asked, on_step=events.append)
    previews = [preview for event in events for preview in event.previews]
    assert [(p.request_id, p.index, p.step, p.total) for p in previews] == [
        ("p", k, step, STEPS) for k, step in enumerate(preview_steps(STEPS, 2))
    ]
    assert all(event.step == p.step for event in events for p in event.previews)
    for preview in previews:
        assert preview.image.mode == "RGB"
        assert preview.image.size == preview_size(ImageSize(96, 64))
    quiet: list[StepEvent] = []
    plain = engine.run([edit("p", num_images=2), edit("q", seed=8)], on_step=quiet.append)
    assert not any(event.previews for event in quiet)
    for with_previews, without in zip(shown, plain, strict=True):
        for ours, theirs in zip(with_previews.images, without.images, strict=True):
            assert max_diff(ours, theirs) == 0


def test_same_seed_same_pixels_other_seed_other_pixels(engine: EditEngine) -> None:
    (a,) = engine.run([edit("s", seed=3)])
    (b,) = engine.run([edit("s", seed=3)])
    (c,) = engine.run([edit("s", seed=4)])
    assert max_diff(a.images[0], b.images[0]) == 0
    assert max_diff(a.images[0], c.images[0]) > 0


def test_image_k_is_drawn_from_seed_plus_k(engine: EditEngine) -> None:
    (three,) = engine.run([edit("k", seed=10, num_images=3)])
    for k in range(3):
        (single,) = engine.run([edit("k", seed=10 + k)])
        assert max_diff(three.images[k], single.images[0]) <= 1


def test_a_requests_pixels_do_not_depend_on_its_batch(engine: EditEngine) -> None:
    first = edit("a", seed=5, num_images=2)
    second = edit("b", prompt="paint it #00FF00", images=(noise(80, 96, 9),), guidance_scale=4.0)
    (alone_first,) = engine.run([first])
    (alone_second,) = engine.run([second])
    together = engine.run([first, second])
    for ours, theirs in zip(together[0].images, alone_first.images, strict=True):
        assert max_diff(ours, theirs) <= 1
    assert max_diff(together[1].images[0], alone_second.images[0]) <= 1
    assert max_diff(together[0].images[0], together[1].images[0]) > 1


def test_cancellation_stops_a_request_before_its_next_step(engine: EditEngine) -> None:
    events: list[StepEvent] = []
    (result,) = engine.run(
        [edit("c")], on_step=events.append, should_cancel=lambda _: len(events) >= 2
    )
    assert result.cancelled
    assert result.images == ()
    assert len(events) == 2


def test_cancelling_one_request_lets_the_rest_of_its_batch_finish(engine: EditEngine) -> None:
    events: list[StepEvent] = []
    keep, drop = edit("keep", seed=21), edit("drop", seed=22, num_images=2)
    (alone,) = engine.run([keep])
    results = engine.run(
        [drop, keep],
        on_step=events.append,
        should_cancel=lambda request_id: request_id == "drop" and len(events) >= 1,
    )
    assert results[0].cancelled and results[0].images == ()
    assert not results[1].cancelled
    assert max_diff(results[1].images[0], alone.images[0]) <= 1
    assert events[0].request_ids == ("drop", "keep")
    assert all(e.request_ids == ("keep",) for e in events[1:])
    assert len(events) == STEPS


def test_a_cancel_asked_before_the_first_step_runs_nothing(engine: EditEngine) -> None:
    events: list[StepEvent] = []
    (result,) = engine.run([edit("early")], on_step=events.append, should_cancel=lambda _: True)
    assert result.cancelled and result.images == ()
    assert events == []


def test_an_unusable_reference_is_refused_before_any_step(engine: EditEngine) -> None:
    events: list[StepEvent] = []
    elongated = edit("bad", images=(Image.new("RGB", (900, 100)),))  # 9:1
    with pytest.raises(InvalidRequest) as caught:
        engine.run([edit("ok"), elongated], on_step=events.append)
    assert caught.value.problems[0].loc == ("body", "image_urls", 0)
    assert events == []


def test_requests_check_their_own_fields() -> None:
    """What engines trust: a request out of range cannot be made at all."""
    valid = edit("r")
    for change in ({"num_images": 5}, {"guidance_scale": 21.0}, {"prompt": " "}, {"steps": 51}):
        with pytest.raises(InvalidRequest):
            dataclasses.replace(valid, **change)  # type: ignore[arg-type]
