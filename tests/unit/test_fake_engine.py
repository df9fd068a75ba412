"""The fake engine's own behaviour (pipelines/fake.py); the engine contract it shares with FLUX.2
is tests/contract/test_engine_contract.py."""

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


def test_different_prompts_give_different_images() -> None:
    a = FakeEngine().run([_request(prompt="a cat")])[0].images[0]
    b = FakeEngine().run([_request(prompt="a dog")])[0].images[0]
    assert not _same(a, b)


def test_reference_image_shows_in_the_output() -> None:
    a = FakeEngine().run([_request(images=(_reference((255, 0, 0)),))])[0].images[0]
    b = FakeEngine().run([_request(images=(_reference((0, 0, 255)),))])[0].images[0]
    assert not _same(a, b)


def test_prompt_expansion_changes_the_prompt_and_the_image() -> None:
    engine = FakeEngine()
    (plain,) = engine.run([_request()])
    (expanded,) = engine.run([_request(enable_prompt_expansion=True)])
    assert plain.prompt == "make it blue"
    assert expanded.prompt != "make it blue"
    assert expanded.prompt.startswith("make it blue")
    assert not _same(plain.images[0], expanded.images[0])


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


def test_no_should_cancel_never_cancels() -> None:
    (result,) = FakeEngine(num_steps=2).run([_request()], should_cancel=None)
    assert result.cancelled is False
    assert len(result.images) == 1


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
