"""The deterministic fake engine honours the engine contract (pipelines/fake.py)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from PIL import Image, ImageChops

from core.errors import InvalidRequest
from pipelines.fake import FakeEngine
from pipelines.protocol import EditEngine
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest, StepEvent


def _reference(color: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    return Image.new("RGB", (64, 48), color)


def _request(**overrides: Any) -> EditRequest:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "prompt": "make it blue",
        "images": (_reference(),),
        "size": ImageSize(96, 64),
        "seed": 11,
    }
    fields.update(overrides)
    return EditRequest(**fields)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def test_satisfies_the_protocol() -> None:
    engine = FakeEngine()
    assert isinstance(engine, EditEngine)
    assert engine.num_steps == 8
    assert FakeEngine(num_steps=3).num_steps == 3


def test_object_without_run_is_not_an_engine() -> None:
    class Half:
        num_steps = 1

        def load(self) -> None: ...

        def warmup(self) -> None: ...

    assert not isinstance(Half(), EditEngine)


def test_import_does_not_pull_in_torch() -> None:
    # The fake and the protocol are torch-free; if torch was already imported by some other
    # test, this check says nothing, so only assert when it is absent.
    if "torch" not in sys.modules:
        import pipelines.fake  # noqa: F401

        assert "torch" not in sys.modules


def test_load_and_warmup() -> None:
    engine = FakeEngine()
    assert engine.loaded is False
    engine.load()
    engine.warmup()
    assert engine.loaded is True


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_one_step_event_per_step(steps: int) -> None:
    events: list[StepEvent] = []
    FakeEngine(num_steps=steps).run([_request()], on_step=events.append)
    assert [e.step for e in events] == list(range(1, steps + 1))
    assert {e.total for e in events} == {steps}
    assert {e.request_ids for e in events} == {("r1",)}


def test_images_have_requested_count_size_and_mode() -> None:
    (result,) = FakeEngine().run([_request(num_images=3, size=ImageSize(112, 72))])
    assert result.request_id == "r1"
    assert result.cancelled is False
    assert result.seed == 11
    assert len(result.images) == 3
    for image in result.images:
        assert image.size == (112, 72)
        assert image.mode == "RGB"
    assert "inference" in result.timings
    assert result.timings["inference"] >= 0.0


def test_one_result_per_request_in_order() -> None:
    batch = [_request(request_id=f"r{i}", seed=i) for i in range(3)]
    results = FakeEngine().run(batch)
    assert [r.request_id for r in results] == ["r0", "r1", "r2"]
    assert [r.seed for r in results] == [0, 1, 2]


def test_deterministic_per_prompt_and_seed() -> None:
    first = FakeEngine().run([_request()])[0].images[0]
    second = FakeEngine().run([_request(request_id="other")])[0].images[0]
    assert _same(first, second)


def test_different_seeds_give_different_images() -> None:
    a = FakeEngine().run([_request(seed=1)])[0].images[0]
    b = FakeEngine().run([_request(seed=2)])[0].images[0]
    assert not _same(a, b)


def test_different_prompts_give_different_images() -> None:
    a = FakeEngine().run([_request(prompt="a cat")])[0].images[0]
    b = FakeEngine().run([_request(prompt="a dog")])[0].images[0]
    assert not _same(a, b)


def test_reference_image_shows_in_the_output() -> None:
    a = FakeEngine().run([_request(images=(_reference((255, 0, 0)),))])[0].images[0]
    b = FakeEngine().run([_request(images=(_reference((0, 0, 255)),))])[0].images[0]
    assert not _same(a, b)


def test_image_k_is_drawn_with_seed_plus_k() -> None:
    engine = FakeEngine()
    (multi,) = engine.run([_request(seed=100, num_images=3)])
    assert not _same(multi.images[0], multi.images[1])
    for k in range(3):
        (single,) = engine.run([_request(seed=100 + k)])
        assert _same(multi.images[k], single.images[0])


def test_images_do_not_depend_on_batch_companions() -> None:
    engine = FakeEngine()
    (alone,) = engine.run([_request()])
    _, together = engine.run([_request(request_id="x", prompt="other", seed=5), _request()])
    assert _same(alone.images[0], together.images[0])


def test_prompt_expansion_changes_the_prompt_and_the_image() -> None:
    engine = FakeEngine()
    (plain,) = engine.run([_request()])
    (expanded,) = engine.run([_request(enable_prompt_expansion=True)])
    assert plain.prompt == "make it blue"
    assert expanded.prompt != "make it blue"
    assert expanded.prompt.startswith("make it blue")
    assert not _same(plain.images[0], expanded.images[0])


def test_cancel_after_step_3() -> None:
    events: list[StepEvent] = []

    def should_cancel(request_id: str) -> bool:
        return len(events) >= 3

    (result,) = FakeEngine(num_steps=8).run(
        [_request()], on_step=events.append, should_cancel=should_cancel
    )
    assert result.cancelled is True
    assert result.images == ()
    assert [e.step for e in events] == [1, 2, 3]
    assert result.prompt == "make it blue"


def test_cancel_before_the_first_step() -> None:
    events: list[StepEvent] = []
    (result,) = FakeEngine().run([_request()], on_step=events.append, should_cancel=lambda _: True)
    assert result.cancelled is True
    assert result.images == ()
    assert events == []


def test_cancel_after_the_last_step_still_cancels() -> None:
    events: list[StepEvent] = []

    def should_cancel(request_id: str) -> bool:
        return len(events) >= 4

    (result,) = FakeEngine(num_steps=4).run(
        [_request()], on_step=events.append, should_cancel=should_cancel
    )
    assert len(events) == 4
    assert result.cancelled is True
    assert result.images == ()


def test_cancelling_one_request_lets_the_other_finish() -> None:
    events: list[StepEvent] = []
    asked: list[str] = []

    def should_cancel(request_id: str) -> bool:
        asked.append(request_id)
        return request_id == "a" and len(events) >= 2

    results = FakeEngine(num_steps=5).run(
        [_request(request_id="a"), _request(request_id="b", num_images=2)],
        on_step=events.append,
        should_cancel=should_cancel,
    )
    a, b = results
    assert a.cancelled is True
    assert a.images == ()
    assert b.cancelled is False
    assert len(b.images) == 2
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert [e.request_ids for e in events] == [("a", "b")] * 2 + [("b",)] * 3
    # a cancelled request is not asked about again
    assert asked.count("a") == 3


def test_no_should_cancel_never_cancels() -> None:
    (result,) = FakeEngine(num_steps=2).run([_request()], should_cancel=None)
    assert result.cancelled is False
    assert len(result.images) == 1


def test_unusable_reference_fails_before_any_step() -> None:
    engine = FakeEngine()
    events: list[StepEvent] = []
    asked: list[str] = []

    def should_cancel(request_id: str) -> bool:
        asked.append(request_id)
        return False

    with pytest.raises(InvalidRequest) as exc_info:
        engine.run(
            [
                _request(request_id="ok"),
                _request(request_id="bad", images=(Image.new("RGB", (900, 100)),)),  # 9:1
            ],
            on_step=events.append,
            should_cancel=should_cancel,
        )
    assert exc_info.value.problems[0].loc == ("body", "image_urls", 0)
    assert events == []
    assert asked == []
    assert engine.calls == []


def test_validation_uses_the_engine_reference_pixels() -> None:
    request = _request(images=(Image.new("RGB", (800, 100)),))
    FakeEngine().run([request])  # fine at 1 MP
    with pytest.raises(InvalidRequest) as exc_info:
        FakeEngine(reference_pixels=64 * 64).run([request])
    assert exc_info.value.problems[0].type == "image_too_small"


def test_calls_are_recorded() -> None:
    engine = FakeEngine(num_steps=1)
    engine.run([_request(request_id="a"), _request(request_id="b")])
    engine.run([_request(request_id="c")])
    assert engine.calls == [("a", "b"), ("c",)]
