"""Request checks every engine runs (pipelines/validation.py) and the request types (types.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.errors import FieldProblem, InvalidRequest
from pipelines.sizes import ImageSize, reference_size
from pipelines.types import EditRequest, EditResult, LoraWeights, StepEvent
from pipelines.validation import validate_request

MP = 1024 * 1024


def _image(width: int = 64, height: int = 64) -> Image.Image:
    return Image.new("RGB", (width, height), (10, 20, 30))


def _request(**overrides: Any) -> EditRequest:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "prompt": "make the sky purple",
        "images": (_image(),),
        "size": ImageSize(512, 512),
        "seed": 7,
    }
    fields.update(overrides)
    return EditRequest(**fields)


def _problem(target_pixels: int = MP, **overrides: Any) -> FieldProblem:
    """The problem of a request with ``overrides``: found when it is made (its fields) or by
    ``validate_request`` (its references at ``target_pixels``)."""
    with pytest.raises(InvalidRequest) as exc_info:
        validate_request(_request(**overrides), target_pixels=target_pixels)
    assert type(exc_info.value) is InvalidRequest
    assert len(exc_info.value.problems) == 1
    return exc_info.value.problems[0]


def test_good_request_passes() -> None:
    validate_request(_request(), target_pixels=MP)  # does not raise


def test_good_request_at_the_limits_passes() -> None:
    request = _request(
        images=tuple(_image() for _ in range(4)),
        num_images=4,
        guidance_scale=20.0,
        size=ImageSize(64, 64),
        seed=2**63 - 1,
    )
    validate_request(request, target_pixels=MP)
    validate_request(_request(num_images=1, guidance_scale=0.0, seed=0), target_pixels=MP)


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(prompt: str) -> None:
    problem = _problem(prompt=prompt)
    assert problem.loc == ("body", "prompt")
    assert problem.type == "string_too_short"
    assert problem.ctx == {"min_length": 1}
    assert problem.input == prompt


def test_no_reference_images_is_text_to_image() -> None:
    request = _request(images=())
    validate_request(request, target_pixels=MP)
    assert request.text_to_image


def test_steps_out_of_range() -> None:
    problem = _problem(steps=51)
    assert problem.loc == ("body", "num_inference_steps")
    assert problem.ctx == {"le": 50}
    assert _problem(steps=0).ctx == {"ge": 1}


def test_too_many_loras() -> None:
    lora = LoraWeights(name="a" * 64, path=Path("a.safetensors"))
    assert _problem(loras=(lora,) * 4).loc == ("body", "loras")
    nan = LoraWeights(name="a" * 64, path=Path("a.safetensors"), scale=float("nan"))
    assert _problem(loras=(nan,)).loc == ("body", "loras", 0, "scale")


def test_regimes_steps_and_adapters_never_share_a_batch() -> None:
    lora = LoraWeights(name="a" * 64, path=Path("a.safetensors"))
    base = _request()
    keys = {
        base.batch_key(MP),
        _request(regime="base").batch_key(MP),
        _request(regime="base", steps=12).batch_key(MP),
        _request(regime="base", acceleration="high").batch_key(MP),
        _request(loras=(lora,)).batch_key(MP),
        _request(loras=(replace(lora, scale=0.5),)).batch_key(MP),
    }
    assert len(keys) == 6
    # acceleration means nothing to the turbo regime: it does not split its batches
    assert _request(acceleration="none").batch_key(MP) == base.batch_key(MP)


def test_five_reference_images() -> None:
    problem = _problem(images=tuple(_image() for _ in range(5)))
    assert problem.loc == ("body", "image_urls")
    assert problem.type == "too_long"
    assert problem.ctx == {"min_length": 0, "max_length": 4}
    assert "got 5" in problem.msg


def test_zero_images() -> None:
    problem = _problem(num_images=0)
    assert problem.loc == ("body", "num_images")
    assert problem.type == "greater_than_equal"
    assert problem.ctx == {"ge": 1}
    assert problem.input == 0


def test_five_images() -> None:
    problem = _problem(num_images=5)
    assert problem.loc == ("body", "num_images")
    assert problem.type == "less_than_equal"
    assert problem.ctx == {"le": 4}
    assert problem.input == 5


def test_negative_guidance() -> None:
    problem = _problem(guidance_scale=-1.0)
    assert problem.loc == ("body", "guidance_scale")
    assert problem.type == "greater_than_equal"
    assert problem.ctx == {"ge": 0}
    assert problem.input == -1.0


def test_guidance_above_20() -> None:
    problem = _problem(guidance_scale=21.0)
    assert problem.loc == ("body", "guidance_scale")
    assert problem.type == "less_than_equal"
    assert problem.ctx == {"le": 20.0}
    assert problem.input == 21.0


def test_nan_guidance_is_rejected() -> None:
    problem = _problem(guidance_scale=float("nan"))
    assert problem.loc == ("body", "guidance_scale")


@pytest.mark.parametrize(("field", "size"), [("width", (63, 512)), ("height", (512, 63))])
def test_output_side_below_64(field: str, size: tuple[int, int]) -> None:
    problem = _problem(size=ImageSize(*size))
    assert problem.loc == ("body", "image_size", field)
    assert problem.type == "greater_than_equal"
    assert problem.ctx == {"ge": 64}
    assert problem.input == 63


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_seed_out_of_range(seed: int) -> None:
    problem = _problem(seed=seed)
    assert problem.loc == ("body", "seed")
    assert problem.type == "value_error"
    assert problem.input == seed


def test_bad_reference_aspect_names_the_image() -> None:
    images = (_image(), _image(), _image(900, 100))
    problem = _problem(images=images)
    assert problem.loc == ("body", "image_urls", 2)
    assert problem.type == "value_error"
    assert problem.ctx == {"max_aspect_ratio": 8.0}


def test_reference_too_small_for_target_pixels() -> None:
    problem = _problem(images=(_image(800, 100),), target_pixels=64 * 64)
    assert problem.loc == ("body", "image_urls", 0)
    assert problem.type == "image_too_small"


def test_first_failing_rule_wins() -> None:
    problem = _problem(prompt="", images=(), num_images=9)
    assert problem.loc == ("body", "prompt")


# -- EditRequest ------------------------------------------------------------------------------


def test_reference_sizes_follow_target_pixels() -> None:
    request = _request(images=(_image(64, 64), _image(300, 200)))
    assert request.reference_sizes(MP) == (ImageSize(1024, 1024), ImageSize(1248, 832))
    assert request.reference_sizes(512 * 512)[0] == ImageSize(512, 512)


def test_batch_key_equal_for_compatible_requests() -> None:
    a = _request(request_id="a", prompt="one", seed=1, guidance_scale=2.5)
    b = _request(
        request_id="b",
        prompt="two",
        seed=99,
        guidance_scale=7.0,
        num_images=3,
        enable_prompt_expansion=True,
        images=(_image(128, 128),),  # a different size, but the same reference size
    )
    assert a.batch_key(MP) == b.batch_key(MP)


def test_batch_key_equal_when_the_generation_canvas_is_the_same() -> None:
    # 1000 and 1008 both denoise a 1008-pixel canvas.
    a = _request(size=ImageSize(1000, 512))
    b = _request(size=ImageSize(1008, 512))
    assert a.batch_key(MP) == b.batch_key(MP)


@pytest.mark.parametrize(
    "change",
    [
        {"size": ImageSize(768, 512)},
        {"size": ImageSize(512, 528)},
        {"images": (_image(300, 200),)},
        {"images": (_image(), _image())},
    ],
)
def test_batch_key_differs_for_incompatible_requests(change: dict[str, Any]) -> None:
    assert _request().batch_key(MP) != _request(**change).batch_key(MP)


def test_batch_key_depends_on_target_pixels() -> None:
    request = _request()
    assert request.batch_key(MP) != request.batch_key(512 * 512)


def test_types_are_frozen_and_default_sensibly() -> None:
    request = _request()
    assert request.num_images == 1
    assert request.guidance_scale == 2.5
    assert request.enable_prompt_expansion is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 3  # type: ignore[misc]
    result = EditResult(request_id="r1", images=(), prompt="p", seed=1)
    assert result.cancelled is False
    assert result.timings == {}
    event = StepEvent(step=1, total=8, request_ids=("r1",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.step = 2  # type: ignore[misc]


# -- references prepared off the GPU thread ----------------------------------------------------


def _prepared_request(*sizes: tuple[int, int]) -> EditRequest:
    images = tuple(Image.new("RGBA", size, (200, 10, 10, 255)) for size in sizes)
    return EditRequest(request_id="r", prompt="p", images=images, size=ImageSize(512, 512), seed=1)


def test_prepared_references_are_what_the_engine_would_feed() -> None:
    request = _prepared_request((200, 577), (1500, 1000))
    prepared = request.with_prepared_references(MP)
    assert prepared.prepared_for == MP
    assert prepared.reference_sizes(MP) == request.reference_sizes(MP)
    for image, size in zip(prepared.images, request.reference_sizes(MP), strict=True):
        assert image.mode == "RGB"
        assert image.size == (size.width, size.height)
    assert prepared.batch_key(MP) == request.batch_key(MP)


def test_prepared_references_keep_their_size_where_sizing_twice_would_not() -> None:
    """200x577 sizes to 592x1728, and 592x1728 would size to 592x1744: not idempotent."""
    request = _prepared_request((200, 577))
    (first,) = request.reference_sizes(MP)
    assert reference_size(first.width, first.height, target_pixels=MP) != first
    prepared = request.with_prepared_references(MP)
    assert prepared.reference_sizes(MP) == (first,)
    assert prepared.with_prepared_references(MP) is prepared


def test_references_prepared_for_another_target_are_sized_again() -> None:
    prepared = _prepared_request((1024, 1024)).with_prepared_references(MP)
    assert prepared.reference_sizes(512 * 512) == (ImageSize(512, 512),)
