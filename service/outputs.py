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
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.JPEG else self.value

    @classmethod
    def from_suffix(cls, suffix: str) -> OutputFormat:
        name = suffix.lower().lstrip(".")
        return cls.JPEG if name == "jpg" else cls(name)


def encode_image(image: Image.Image, fmt: OutputFormat) -> bytes:
    """The image as ``fmt`` bytes (JPEG and WebP at quality 95; PNG lossless)."""
    buffer = io.BytesIO()
    if fmt is OutputFormat.PNG:
        image.save(buffer, format="PNG")
    elif fmt is OutputFormat.JPEG:
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="WEBP", quality=95)
    return buffer.getvalue()
