"""fal's output-size rules and the reference-image sizing, in plain Python (no torch).

Output sizes
    fal's presets, or ``{width, height}`` with each side in 512..2048. FLUX.2 works on a 16-pixel
    grid (8x VAE compression times 2x2 patches). A side that is not a multiple of 16 is generated
    at the next multiple of 16 and the image is then centre-cropped to the exact size asked for:
    the user always gets ``width x height`` pixels, at most 15 pixels of the generated canvas
    are cut, and nothing is stretched. (diffusers alone would silently floor the size.)

Reference images
    fal documents "Input images will be resized to 1MP". Each reference is scaled, keeping its
    aspect ratio, to about ``target_pixels`` (default 1024x1024) in either direction, then both
    sides are floored to multiples of 16. ``Flux2Pipeline`` would leave such an image as it is,
    so a direct pipeline call and the engine see the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest

GRID = 16
MIN_SIDE = 512
MAX_SIDE = 2048
DEFAULT_PRESET = "square_hd"
REFERENCE_PIXELS = 1024 * 1024
MIN_REFERENCE_SIDE = 64  # Flux2ImageProcessor rejects anything shorter
MAX_REFERENCE_ASPECT = 8.0  # ... and anything more elongated than 8:1


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int

    @property
    def generation(self) -> ImageSize:
        """The canvas actually denoised: each side rounded up to the 16-pixel grid."""
        return ImageSize(round_up(self.width), round_up(self.height))


PRESETS: dict[str, ImageSize] = {
    "square_hd": ImageSize(1024, 1024),
    "square": ImageSize(512, 512),
    "portrait_4_3": ImageSize(768, 1024),
    "portrait_16_9": ImageSize(576, 1024),
    "landscape_4_3": ImageSize(1024, 768),
    "landscape_16_9": ImageSize(1024, 576),
}


def round_up(value: int, grid: int = GRID) -> int:
    return -(-value // grid) * grid


def resolve_image_size(
    value: str | ImageSize | dict[str, Any] | None,
    *,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
) -> ImageSize:
    """Turn fal's ``image_size`` (preset name, ``{width, height}`` or None) into pixels.

    Raises:
        InvalidRequest: unknown preset, or a side outside ``min_side..max_side``; the problem's
            ``type`` and ``ctx`` follow pydantic/fal (``greater_than_equal``/``ge`` ...).
    """
    if value is None:
        return PRESETS[DEFAULT_PRESET]
    if isinstance(value, str):
        if value not in PRESETS:
            raise _problem(
                "one_of",
                f"Input should be {', '.join(repr(p) for p in PRESETS)}",
                ("body", "image_size"),
                {"expected": ", ".join(repr(p) for p in PRESETS)},
                value,
            )
        return PRESETS[value]
    if isinstance(value, dict):
        try:
            value = ImageSize(width=int(value["width"]), height=int(value["height"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise _problem(
                "value_error",
                "image_size must be a preset name or an object with integer width and height",
                ("body", "image_size"),
                {},
                value,
            ) from exc
    for side in ("width", "height"):
        pixels = getattr(value, side)
        if pixels < min_side:
            raise _problem(
                "greater_than_equal",
                f"Input should be greater than or equal to {min_side}",
                ("body", "image_size", side),
                {"ge": min_side},
                pixels,
            )
        if pixels > max_side:
            raise _problem(
                "less_than_equal",
                f"Input should be less than or equal to {max_side}",
                ("body", "image_size", side),
                {"le": max_side},
                pixels,
            )
    return value


def parse_image_size(text: str) -> ImageSize:
    """Command-line form: a preset name or ``WIDTHxHEIGHT`` (e.g. ``1024x768``)."""
    if "x" in text.lower() and text not in PRESETS:
        width, _, height = text.lower().partition("x")
        try:
            return resolve_image_size(ImageSize(int(width), int(height)))
        except ValueError as exc:
            raise InvalidRequest(f"not a size: {text!r} (use a preset or WIDTHxHEIGHT)") from exc
    return resolve_image_size(text)


def reference_size(
    width: int, height: int, *, target_pixels: int = REFERENCE_PIXELS, index: int = 0
) -> ImageSize:
    """The size a reference image is resized to: about ``target_pixels``, on the 16-pixel grid.

    Raises:
        InvalidRequest: the image is more elongated than 8:1 or would end up under 64 pixels on
            its short side (limits of ``Flux2ImageProcessor``).
    """
    loc: tuple[str | int, ...] = ("body", "image_urls", index)
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > MAX_REFERENCE_ASPECT:
        raise _problem(
            "value_error",
            f"Reference image {index} is {width}x{height}: the aspect ratio must be at most 8:1",
            loc,
            {"max_aspect_ratio": MAX_REFERENCE_ASPECT},
            None,
        )
    if width < 1 or height < 1:
        raise _problem("image_load_error", f"Reference image {index} is empty", loc, {}, None)
    # Exact integer arithmetic: float scaling turns 1024.0 into 1023.99… and floors a grid step.
    new_w = math.isqrt(width * target_pixels // height) // GRID * GRID
    new_h = math.isqrt(height * target_pixels // width) // GRID * GRID
    if min(new_w, new_h) < MIN_REFERENCE_SIDE:
        raise _problem(
            "image_too_small",
            f"Reference image {index} would be {new_w}x{new_h} after resizing to "
            f"{target_pixels} pixels; its short side must reach {MIN_REFERENCE_SIDE}",
            loc,
            {"min_width": MIN_REFERENCE_SIDE, "min_height": MIN_REFERENCE_SIDE},
            None,
        )
    return ImageSize(new_w, new_h)


def _problem(
    type_: str, msg: str, loc: tuple[str | int, ...], ctx: dict[str, Any], value: Any
) -> InvalidRequest:
    return InvalidRequest(msg, loc=loc, type=type_, ctx=ctx, input=value)
