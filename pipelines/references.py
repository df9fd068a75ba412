"""Reference images as the engine feeds them: RGB, resized to their reference size (PIL only).

The worker resizes them on its prepare threads, while the GPU runs the previous batch
(:meth:`pipelines.types.EditRequest.with_prepared_references`); the engine resizes whatever
arrives unprepared. Both use :func:`resize_reference`, so the pixels are the same either way.
"""

from __future__ import annotations

from PIL import Image

from pipelines.sizes import ImageSize


def resize_reference(image: Image.Image, size: ImageSize) -> Image.Image:
    """``image`` in RGB at exactly ``size`` (Lanczos, from the original pixels); an image that
    is both already is returned as it is (a reference the worker prepared: no copy)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size.width, size.height):
        image = image.resize((size.width, size.height), Image.Resampling.LANCZOS)
    return image
