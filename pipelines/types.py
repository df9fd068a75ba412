"""Frozen request/result types that cross the engine seam (no torch here)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from PIL import Image

from core.errors import InvalidRequest
from pipelines.references import resize_reference
from pipelines.sizes import ImageSize, reference_size

MAX_REFERENCES = 4
MAX_IMAGES = 4
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1  # image k uses seed + k: still a valid generator seed
MIN_OUTPUT_SIDE = 64  # the engine's own floor; the HTTP schema applies fal's 512..2048
MAX_PREVIEWS = 3  # partial images one request may ask for (OpenAI's partial_images: 0..3)
MAX_STEPS = 50  # fal's base endpoints take num_inference_steps 4..50; the engine's floor is 1
BASE_STEPS = 28  # FLUX.2 [dev]'s own default step count (the base endpoints' default)
MAX_LORAS = 3  # fal's lora endpoints take up to 3 adapters per request

#: How a request is denoised. ``turbo``: the 8-step distilled recipe (the Turbo LoRA active, the
#: flash/turbo endpoints); ``base``: FLUX.2 [dev]'s own schedule with the request's step count
#: and without the Turbo LoRA (``fal-ai/flux-2``, ``/edit``, ``/lora``, ``/lora/edit``).
Regime = Literal["turbo", "base"]
#: fal's ``acceleration`` for the base endpoints: ``none`` the exact diffusers computation,
#: ``regular`` the lossless fast paths the operator enabled, ``high`` step caching as well.
Acceleration = Literal["none", "regular", "high"]


@dataclass(frozen=True)
class LoraWeights:
    """One LoRA a request applies: a local safetensors file and its scale.

    The service resolves a request's ``loras[i].path`` (URL, operator directory name or Hugging
    Face cache entry) to a local file before the engine sees it; ``name`` is stable for the same
    bytes (the file's sha256), so engines key their adapter caches and batches on it.
    """

    name: str
    path: Path
    scale: float = 1.0


@dataclass(frozen=True)
class EditRequest:
    """One edit: what a single fal request asks of the engine.

    Image ``k`` of the request is drawn from its own generator seeded with ``seed + k``, so its
    pixels do not depend on what else runs in the same batch.
    """

    request_id: str
    prompt: str
    images: tuple[Image.Image, ...]
    size: ImageSize
    seed: int
    num_images: int = 1
    guidance_scale: float = 2.5
    enable_prompt_expansion: bool = False
    #: The reference pixel target ``images`` are already resized for (RGB, at their reference
    #: sizes), or None when the engine still has to resize them.
    prepared_for: int | None = None
    #: Previews wanted: cheap pictures of the current estimate of the first output image, at
    #: the steps :func:`preview_steps` picks (0: none, and no work spent on them).
    previews: int = 0
    #: The denoising recipe (see :data:`Regime`).
    regime: Regime = "turbo"
    #: Denoising steps; None: the regime's default (the engine's turbo steps, or
    #: :data:`BASE_STEPS`).
    steps: int | None = None
    #: See :data:`Acceleration`; only the base regime reads it.
    acceleration: Acceleration = "regular"
    #: Adapters applied on top of the regime's weights, in order.
    loras: tuple[LoraWeights, ...] = ()

    @property
    def text_to_image(self) -> bool:
        """True for a request without reference images (text-to-image)."""
        return not self.images

    def __post_init__(self) -> None:
        check_fields(self)

    def reference_sizes(self, target_pixels: int) -> tuple[ImageSize, ...]:
        """The size each reference is fed at: about ``target_pixels``, on the 16-pixel grid.

        Sizing is not idempotent (flooring to the grid can step up on a second pass), so
        references already prepared for ``target_pixels`` keep the size they have.
        """
        if self.prepared_for == target_pixels:
            return tuple(ImageSize(*image.size) for image in self.images)
        return tuple(
            reference_size(*image.size, target_pixels=target_pixels, index=i)
            for i, image in enumerate(self.images)
        )

    def with_prepared_references(self, target_pixels: int) -> EditRequest:
        """This request with its references resized now, as the engine would resize them.

        Raises:
            InvalidRequest: a reference cannot be used (see :func:`reference_size`).
        """
        if self.prepared_for == target_pixels:
            return self
        sizes = self.reference_sizes(target_pixels)
        images = tuple(resize_reference(im, s) for im, s in zip(self.images, sizes, strict=True))
        return replace(self, images=images, prepared_for=target_pixels)

    def batch_key(self, target_pixels: int) -> tuple[object, ...]:
        """Requests with equal keys can share one denoising call (same tensor shapes).

        Guidance may differ inside a batch: FLUX.2 takes one guidance value per batch row.
        Regimes, step counts, acceleration levels and adapter sets never share a batch.
        """
        return (
            self.size.generation,
            self.reference_sizes(target_pixels),
            self.regime,
            self.steps,
            self.acceleration if self.regime == "base" else "regular",
            tuple((lora.name, lora.scale) for lora in self.loras),
        )


def check_fields(request: EditRequest) -> None:
    """Raise :class:`InvalidRequest` naming the field (in fal's form, under ``body``) when a
    field of ``request`` is out of what the engine can run."""
    if not request.prompt.strip():
        raise InvalidRequest(
            "Field required: prompt must not be empty",
            loc=("body", "prompt"),
            type="string_too_short",
            ctx={"min_length": 1},
            input=request.prompt,
        )
    if len(request.images) > MAX_REFERENCES:  # none: text-to-image
        raise InvalidRequest(
            f"at most {MAX_REFERENCES} reference images are accepted, got {len(request.images)}",
            loc=("body", "image_urls"),
            type="too_long",
            ctx={"min_length": 0, "max_length": MAX_REFERENCES},
        )
    if request.steps is not None and not 1 <= request.steps <= MAX_STEPS:
        raise InvalidRequest(
            f"num_inference_steps must be between 1 and {MAX_STEPS}",
            loc=("body", "num_inference_steps"),
            type="less_than_equal" if request.steps > MAX_STEPS else "greater_than_equal",
            ctx={"le": MAX_STEPS} if request.steps > MAX_STEPS else {"ge": 1},
            input=request.steps,
        )
    if len(request.loras) > MAX_LORAS:
        raise InvalidRequest(
            f"at most {MAX_LORAS} LoRAs are accepted, got {len(request.loras)}",
            loc=("body", "loras"),
            type="too_long",
            ctx={"max_length": MAX_LORAS},
        )
    for i, lora in enumerate(request.loras):
        if not math.isfinite(lora.scale):
            raise InvalidRequest(
                "a LoRA scale must be a finite number",
                loc=("body", "loras", i, "scale"),
                input=lora.scale,
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
    if not 0 <= request.previews <= MAX_PREVIEWS:
        raise InvalidRequest(
            f"previews must be between 0 and {MAX_PREVIEWS}",
            loc=("body", "previews"),
            input=request.previews,
        )
    if not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequest(
            "seed must be a non-negative 63-bit integer",
            loc=("body", "seed"),
            input=request.seed,
        )


def preview_steps(total: int, count: int) -> tuple[int, ...]:
    """The steps (1..total-1) after which ``count`` previews are made: spread evenly, never the
    last step (the final image comes then). 8 steps: 1 preview after step 4, 2 after 3 and 5, 3
    after 2, 4 and 6."""
    if total < 2 or count < 1:
        return ()
    return tuple(sorted({min(total - 1, max(1, round(k * total / (count + 1)))) for k in
                         range(1, count + 1)}))  # fmt: skip


def preview_plan(requests: Sequence[EditRequest], total: int) -> dict[int, list[tuple[int, int]]]:
    """``{step: [(request index, preview index), ...]}`` for the requests of a batch that want
    previews; empty (and nothing to do) when none does."""
    plan: dict[int, list[tuple[int, int]]] = {}
    for j, request in enumerate(requests):
        for k, step in enumerate(preview_steps(total, request.previews)):
            plan.setdefault(step, []).append((j, k))
    return plan


def preview_size(size: ImageSize) -> tuple[int, int]:
    """The size of a preview of an output of ``size``: a quarter of each side."""
    return max(16, size.width // 4), max(16, size.height // 4)


@dataclass(frozen=True)
class Preview:
    """A cheap picture of where a request's first output image is heading, mid-run.

    ``index`` counts a request's previews from 0; ``image`` is small (a fraction of the output
    size: see the engine) and RGB.
    """

    request_id: str
    index: int
    step: int
    total: int
    image: Image.Image


@dataclass(frozen=True)
class StepEvent:
    """Progress of one denoising step of a batch; ``step`` counts from 1 to ``total``.

    ``previews`` holds the previews made after this step for the requests that asked for one
    now (usually none).
    """

    step: int
    total: int
    request_ids: tuple[str, ...]
    previews: tuple[Preview, ...] = ()


@dataclass(frozen=True)
class EditResult:
    """What the engine made of one request.

    ``prompt`` is the prompt actually used: the expanded one when expansion was on.
    ``timings`` are seconds, with fal's ``inference`` key for the whole engine time.
    A cancelled request has ``cancelled=True`` and no images.
    """

    request_id: str
    images: tuple[Image.Image, ...]
    prompt: str
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    cancelled: bool = False


StepCallback = Callable[[StepEvent], None]
CancelCheck = Callable[[str], bool]
