"""Encoding output images (service/outputs.py)."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from service.outputs import OutputFormat, encode_image


def _noisy(width: int = 40, height: int = 24, mode: str = "RGB") -> Image.Image:
    pixels = random.Random(7).randbytes(width * height * len(mode))
    return Image.frombytes(mode, (width, height), pixels)


@pytest.mark.parametrize(
    ("fmt", "pil_format"),
    [(OutputFormat.PNG, "PNG"), (OutputFormat.JPEG, "JPEG"), (OutputFormat.WEBP, "WEBP")],
)
def test_encoded_bytes_read_back(fmt: OutputFormat, pil_format: str) -> None:
    data = encode_image(_noisy(), fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == pil_format
        assert image.size == (40, 24)
        image.load()


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_rgba_input_is_encoded(fmt: OutputFormat) -> None:
    data = encode_image(_noisy(mode="RGBA"), fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (40, 24)
        assert image.format == fmt.name


def test_png_round_trips_pixel_exact() -> None:
    source = _noisy()
    with Image.open(io.BytesIO(encode_image(source, OutputFormat.PNG))) as image:
        assert image.mode == "RGB"
        assert image.tobytes() == source.tobytes()


def test_jpeg_is_high_quality() -> None:
    source = Image.new("RGB", (64, 64), (200, 100, 50))
    with Image.open(io.BytesIO(encode_image(source, OutputFormat.JPEG))) as image:
        r, g, b = image.convert("RGB").getpixel((32, 32))  # type: ignore[misc]
    assert abs(r - 200) <= 3
    assert abs(g - 100) <= 3
    assert abs(b - 50) <= 3


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [
        (OutputFormat.PNG, "image/png", "png"),
        (OutputFormat.JPEG, "image/jpeg", "jpg"),
        (OutputFormat.WEBP, "image/webp", "webp"),
    ],
)
def test_content_type_and_extension(fmt: OutputFormat, content_type: str, extension: str) -> None:
    assert fmt.content_type == content_type
    assert fmt.extension == extension


def test_values_are_fal_output_format_strings() -> None:
    assert [f.value for f in OutputFormat] == ["png", "jpeg", "webp"]
    assert OutputFormat("jpeg") is OutputFormat.JPEG
    assert str(OutputFormat.PNG) == "png"


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [
        (".jpg", OutputFormat.JPEG),
        (".JPG", OutputFormat.JPEG),
        (".jpeg", OutputFormat.JPEG),
        (".JPEG", OutputFormat.JPEG),
        (".webp", OutputFormat.WEBP),
        (".png", OutputFormat.PNG),
        (".PNG", OutputFormat.PNG),
        ("png", OutputFormat.PNG),
    ],
)
def test_from_suffix(suffix: str, expected: OutputFormat) -> None:
    assert OutputFormat.from_suffix(suffix) is expected


@pytest.mark.parametrize("suffix", [".gif", "", ".tiff", ".jp"])
def test_from_suffix_rejects_other_suffixes(suffix: str) -> None:
    with pytest.raises(ValueError, match="OutputFormat"):
        OutputFormat.from_suffix(suffix)
