"""Small images for requests: PNG bytes and ``data:`` URIs."""

from __future__ import annotations

import base64
import io

from PIL import Image

Colour = tuple[int, int, int]


def png_bytes(width: int = 64, height: int = 64, colour: Colour = (200, 40, 40)) -> bytes:
    """A plain PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes | None = None, media_type: str = "image/png") -> str:
    """``data`` (a 64x64 red PNG by default) as a base64 ``data:`` URI."""
    payload = png_bytes() if data is None else data
    return f"data:{media_type};base64,{base64.b64encode(payload).decode()}"


def png_data_uri(width: int = 64, height: int = 64, colour: Colour = (200, 40, 40)) -> str:
    """A PNG of ``width`` x ``height`` in one colour, as a ``data:`` URI."""
    return data_uri(png_bytes(width, height, colour))
