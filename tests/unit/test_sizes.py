"""fal's output-size presets and bounds, and the reference-image sizing (pipelines/sizes.py)."""

from __future__ import annotations

import math

import pytest

from core.errors import FieldProblem, InvalidRequest
from pipelines.sizes import (
    ImageSize,
    parse_image_size,
    reference_size,
    resolve_image_size,
    round_up,
)

FAL_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
MP = 1024 * 1024


def _problem(exc_info: pytest.ExceptionInfo[InvalidRequest]) -> FieldProblem:
    assert len(exc_info.value.problems) == 1
    return exc_info.value.problems[0]


# -- output sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "expected"), FAL_PRESETS.items())
def test_every_preset_resolves_to_fal_dimensions(preset: str, expected: tuple[int, int]) -> None:
    size = resolve_image_size(preset)
    assert (size.width, size.height) == expected


def test_none_is_square_hd() -> None:
    assert resolve_image_size(None) == ImageSize(1024, 1024)


def test_custom_dict_is_taken_as_is() -> None:
    assert resolve_image_size({"width": 800, "height": 600}) == ImageSize(800, 600)


def test_custom_dict_with_numeric_strings_is_coerced() -> None:
    assert resolve_image_size({"width": "1000", "height": "700"}) == ImageSize(1000, 700)


def test_image_size_object_passes_through() -> None:
    assert resolve_image_size(ImageSize(640, 2048)) == ImageSize(640, 2048)


@pytest.mark.parametrize("side", [512, 2048])
@pytest.mark.parametrize("field", ["width", "height"])
def test_bounds_are_inclusive(field: str, side: int) -> None:
    value = {"width": 1024, "height": 1024, field: side}
    size = resolve_image_size(value)
    assert getattr(size, field) == side


@pytest.mark.parametrize("field", ["width", "height"])
def test_side_below_512_is_greater_than_equal(field: str) -> None:
    value = {"width": 1024, "height": 1024, field: 511}
    with pytest.raises(InvalidRequest) as exc_info:
        resolve_image_size(value)
    problem = _problem(exc_info)
    assert problem.loc == ("body", "image_size", field)
    assert problem.type == "greater_than_equal"
    assert problem.ctx == {"ge": 512}
    assert problem.input == 511
    assert problem.msg == "Input should be greater than or equal to 512"


@pytest.mark.parametrize("field", ["width", "height"])
def test_side_above_2048_is_less_than_equal(field: str) -> None:
    value = {"width": 1024, "height": 1024, field: 2049}
    with pytest.raises(InvalidRequest) as exc_info:
        resolve_image_size(value)
    problem = _problem(exc_info)
    assert problem.loc == ("body", "image_size", field)
    assert problem.type == "less_than_equal"
    assert problem.ctx == {"le": 2048}
    assert problem.input == 2049
    assert problem.msg == "Input should be less than or equal to 2048"


def test_custom_bounds_are_honoured() -> None:
    assert resolve_image_size(ImageSize(64, 64), min_side=64) == ImageSize(64, 64)
    with pytest.raises(InvalidRequest) as exc_info:
        resolve_image_size(ImageSize(1024, 1100), max_side=1024)
    assert _problem(exc_info).ctx == {"le": 1024}


def test_unknown_preset_is_one_of() -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        resolve_image_size("square_xl")
    problem = _problem(exc_info)
    assert problem.type == "one_of"
    assert problem.loc == ("body", "image_size")
    assert problem.input == "square_xl"
    for preset in FAL_PRESETS:
        assert repr(preset) in problem.ctx["expected"]
        assert repr(preset) in problem.msg


@pytest.mark.parametrize(
    "value",
    [
        {"width": 1024},
        {"height": 1024},
        {},
        {"width": None, "height": 1024},
        {"width": "wide", "height": 1024},
        {"width": [1024], "height": 1024},
    ],
)
def test_malformed_dict_is_value_error(value: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        resolve_image_size(value)
    problem = _problem(exc_info)
    assert problem.type == "value_error"
    assert problem.loc == ("body", "image_size")
    assert problem.input == value


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (ImageSize(1024, 1024), ImageSize(1024, 1024)),
        (ImageSize(1000, 513), ImageSize(1008, 528)),
        (ImageSize(1009, 1023), ImageSize(1024, 1024)),
        (ImageSize(512, 2047), ImageSize(512, 2048)),
        (ImageSize(1, 17), ImageSize(16, 32)),
    ],
)
def test_generation_rounds_each_side_up_to_16(size: ImageSize, expected: ImageSize) -> None:
    assert size.generation == expected


def test_generation_never_cuts_more_than_15_pixels() -> None:
    for side in range(512, 2049):
        canvas = ImageSize(side, side).generation.width
        assert canvas % 16 == 0
        assert 0 <= canvas - side <= 15


def test_round_up() -> None:
    assert [round_up(v) for v in (0, 1, 15, 16, 17, 32)] == [0, 16, 16, 16, 32, 32]
    assert round_up(9, grid=8) == 16


# -- command-line form ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1024x768", "1024X768"])
def test_parse_width_x_height(text: str) -> None:
    assert parse_image_size(text) == ImageSize(1024, 768)


def test_parse_preset_name() -> None:
    assert parse_image_size("portrait_16_9") == ImageSize(576, 1024)


@pytest.mark.parametrize("text", ["axb", "1024x", "x768", "1024x768px", "12.5x600"])
def test_parse_bad_text_is_invalid_request(text: str) -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        parse_image_size(text)
    assert text in exc_info.value.message


def test_parse_unknown_word_is_one_of() -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        parse_image_size("huge")
    assert _problem(exc_info).type == "one_of"


def test_parse_applies_the_bounds() -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        parse_image_size("256x1024")
    problem = _problem(exc_info)
    assert problem.type == "greater_than_equal"
    assert problem.loc == ("body", "image_size", "width")


# -- reference images -------------------------------------------------------------------------


REFERENCE_CASES = [
    (1024, 1024),
    (2048, 2048),
    (4000, 3000),
    (3000, 4000),
    (1920, 1080),
    (3840, 2160),
    (600, 800),
    (300, 200),
    (100, 100),
    (800, 100),
    (5000, 5000),
    (1234, 987),
]


@pytest.mark.parametrize(("width", "height"), REFERENCE_CASES)
def test_reference_size_is_on_grid_near_target_area(width: int, height: int) -> None:
    size = reference_size(width, height)
    assert size.width % 16 == 0
    assert size.height % 16 == 0
    # Floored, so never above the target, and each side at most 16 px (+1 for int()) short.
    assert size.width * size.height <= MP
    exact_w = width * math.sqrt(MP / (width * height))
    exact_h = height * math.sqrt(MP / (width * height))
    assert exact_w - 17 < size.width <= exact_w
    assert exact_h - 17 < size.height <= exact_h


@pytest.mark.parametrize(("width", "height"), REFERENCE_CASES)
def test_reference_size_keeps_aspect(width: int, height: int) -> None:
    size = reference_size(width, height)
    # Each side is off by < 17 px, so the aspect can drift by at most that much relatively.
    assert size.width / size.height == pytest.approx(width / height, rel=0.06)
    assert (size.width >= size.height) == (width >= height)


def test_reference_size_upscales_small_images() -> None:
    size = reference_size(256, 128)
    assert size.width > 256
    assert size.height > 128
    assert size.width * size.height > 0.9 * MP


def test_reference_size_exact_cases() -> None:
    assert reference_size(1024, 1024) == ImageSize(1024, 1024)
    assert reference_size(512, 512) == ImageSize(1024, 1024)
    assert reference_size(4000, 3000) == ImageSize(1168, 880)
    assert reference_size(1920, 1080) == ImageSize(1360, 768)
    assert reference_size(1024, 1024, target_pixels=512 * 512) == ImageSize(512, 512)


@pytest.mark.parametrize("side", [1040, 1338])
def test_square_reference_becomes_exactly_the_target_square(side: int) -> None:
    # sqrt(1024**2 / side**2) * side is exactly 1024, already on the grid: nothing to floor.
    assert reference_size(side, side) == ImageSize(1024, 1024)


def test_reference_size_matches_exact_integer_arithmetic() -> None:
    mismatches = []
    for width in range(64, 3000, 7):
        for height in range(64, 3000, 13):
            if max(width, height) / min(width, height) > 8:
                continue
            exact = ImageSize(
                math.isqrt(width * MP // height) // 16 * 16,
                math.isqrt(height * MP // width) // 16 * 16,
            )
            if min(exact.width, exact.height) < 64:
                continue
            got = reference_size(width, height)
            if got != exact:
                mismatches.append((width, height, got, exact))
    assert mismatches == []


@pytest.mark.parametrize(("width", "height"), [(8000, 999), (999, 8000), (900, 100)])
@pytest.mark.parametrize("index", [0, 3])
def test_reference_aspect_over_8_to_1_is_rejected(width: int, height: int, index: int) -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        reference_size(width, height, index=index)
    problem = _problem(exc_info)
    assert problem.loc == ("body", "image_urls", index)
    assert problem.type == "value_error"
    assert problem.ctx == {"max_aspect_ratio": 8.0}
    assert "8:1" in problem.msg


def test_reference_aspect_of_exactly_8_to_1_is_accepted() -> None:
    size = reference_size(8000, 1000)
    assert size.width > size.height >= 64


def test_reference_too_small_after_resize() -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        reference_size(800, 100, target_pixels=64 * 64, index=2)
    problem = _problem(exc_info)
    assert problem.type == "image_too_small"
    assert problem.loc == ("body", "image_urls", 2)
    assert problem.ctx == {"min_width": 64, "min_height": 64}
