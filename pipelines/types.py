"""Frozen request/result types that cross the engine seam (no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from PIL import Image

from pipelines.references import resize_reference
from pipelines.sizes import ImageSize, reference_size

MAX_REFERENCES = 4
MAX_IMAGES = 4
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 20.0


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
        """
        return (self.size.generation, self.reference_sizes(target_pixels))


@dataclass(frozen=True)
class StepEvent:
    """Progress of one denoising step of a batch; ``step`` counts from 1 to ``total``."""

    step: int
    total: int
    request_ids: tuple[str, ...]


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
