"""Checks every engine runs on a request before any model work (no torch here)."""

from __future__ import annotations

from core.errors import InvalidRequest
from pipelines.types import MAX_GUIDANCE, MAX_IMAGES, MAX_REFERENCES, MIN_GUIDANCE, EditRequest

MIN_OUTPUT_SIDE = 64  # the engine's own floor; the HTTP schema applies fal's 512..2048


def validate_request(request: EditRequest, *, target_pixels: int) -> None:
    """Raise :class:`InvalidRequest` naming the field when ``request`` cannot run."""
    if not request.prompt.strip():
        raise InvalidRequest(
            "Field required: prompt must not be empty",
            loc=("body", "prompt"),
            type="string_too_short",
            ctx={"min_length": 1},
            input=request.prompt,
        )
    if not 1 <= len(request.images) <= MAX_REFERENCES:
        raise InvalidRequest(
            f"between 1 and {MAX_REFERENCES} reference images are needed, "
            f"got {len(request.images)}",
            loc=("body", "image_urls"),
            type="too_short" if not request.images else "too_long",
            ctx={"min_length": 1, "max_length": MAX_REFERENCES},
        )
    if not 1 <= request.num_images <= MAX_IMAGES:
        bound, type_ = (
            ({"ge": 1}, "greater_than_equal")
            if request.num_images < 1
            else ({"le": MAX_IMAGES}, "less_than_equal")
        )
        raise InvalidRequest(
            f"num_images must be between 1 and {MAX_IMAGES}",
            loc=("body", "num_images"),
            type=type_,
            ctx=bound,
            input=request.num_images,
        )
    if not MIN_GUIDANCE <= request.guidance_scale <= MAX_GUIDANCE:
        raise InvalidRequest(
            f"guidance_scale must be between {MIN_GUIDANCE:g} and {MAX_GUIDANCE:g}",
            loc=("body", "guidance_scale"),
            type="less_than_equal"
            if request.guidance_scale > MAX_GUIDANCE
            else "greater_than_equal",
            ctx={"le": MAX_GUIDANCE} if request.guidance_scale > MAX_GUIDANCE else {"ge": 0},
            input=request.guidance_scale,
        )
    for side in ("width", "height"):
        if getattr(request.size, side) < MIN_OUTPUT_SIDE:
            raise InvalidRequest(
                f"image_size.{side} must be at least {MIN_OUTPUT_SIDE}",
                loc=("body", "image_size", side),
                type="greater_than_equal",
                ctx={"ge": MIN_OUTPUT_SIDE},
                input=getattr(request.size, side),
            )
    if not 0 <= request.seed < 2**63:
        raise InvalidRequest(
            "seed must be a non-negative 63-bit integer",
            loc=("body", "seed"),
            input=request.seed,
        )
    request.reference_sizes(target_pixels)  # raises on unusable reference shapes
