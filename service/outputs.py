"""Encoding output images as PNG, JPEG or WebP bytes."""

from __future__ import annotations

import io
from enum import StrEnum

from PIL import Image


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def pillow_name(self) -> str:
        return self.value.upper()

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @classmethod
    def from_suffix(cls, suffix: str) -> OutputFormat:
        name = suffix.lower().lstrip(".")
        return cls.JPEG if name == "jpg" else cls(name)


# Chosen for speed at 1024² (benchmarks/bench_outputs.py, RESULTS.md): PNG level 1 is 5x faster
# than Pillow's default level 6 for ~19 % more bytes; WebP method 2 is 2.5x faster than method 4
# at the same size; JPEG's optimize pass doubles the time to save 5 %.
SAVE_OPTIONS: dict[OutputFormat, dict[str, int]] = {
    OutputFormat.PNG: {"compress_level": 1},
    OutputFormat.JPEG: {"quality": 95},
    OutputFormat.WEBP: {"quality": 90, "method": 2},
}


def encode_image(image: Image.Image, fmt: OutputFormat, *, quality: int | None = None) -> bytes:
    """The image as ``fmt`` bytes: PNG lossless, JPEG quality 95, WebP quality 90, or JPEG and
    WebP at ``quality`` (0..100; PNG ignores it)."""
    options = dict(SAVE_OPTIONS[fmt])
    if quality is not None and fmt is not OutputFormat.PNG:
        options["quality"] = max(0, min(100, quality))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt.pillow_name, **options)
    return buffer.getvalue()
