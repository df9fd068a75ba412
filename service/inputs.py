"""Reading reference images: ``data:`` URIs, http(s) URLs, and (CLI only) local paths.

Every failure is a fal-typed :class:`InvalidRequest` at ``["body", "image_urls", index]``:
``file_download_error`` (unreachable, HTTP error, too big), ``unsupported_image_format``,
``image_load_error`` (corrupt bytes) or ``image_too_large`` (a decompression bomb).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path
from urllib.parse import unquote_to_bytes

import httpx
from PIL import Image, UnidentifiedImageError

from service.errors import (
    FileDownloadError,
    ImageLoadError,
    ImageTooLarge,
    UnsupportedImageFormat,
)

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 8192 * 8192


def _loc(index: int) -> tuple[str | int, ...]:
    return ("body", "image_urls", index)


def decode_image(data: bytes, *, index: int = 0, source: str | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image, or raise a fal-typed error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise UnsupportedImageFormat(
                    f"Unsupported image format {image.format}",
                    loc=_loc(index),
                    ctx={"supported_formats": [f.lower() for f in SUPPORTED_FORMATS]},
                    input=source,
                )
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageTooLarge(
                    f"Image is {image.width}x{image.height}; at most {MAX_IMAGE_PIXELS} pixels",
                    loc=_loc(index),
                    ctx={"max_width": 8192, "max_height": 8192},
                    input=source,
                )
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            "Image is too large", loc=_loc(index), ctx={"max_width": 8192}, input=source
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImageFormat(
            "Could not identify the image format",
            loc=_loc(index),
            ctx={"supported_formats": [f.lower() for f in SUPPORTED_FORMATS]},
            input=source,
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"Could not load image: {exc}", loc=_loc(index), input=source) from exc
    return image.convert("RGB")


def read_data_uri(uri: str, *, index: int = 0) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise ImageLoadError("Malformed data URI", loc=_loc(index), input=uri[:64])
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise ImageLoadError("Malformed base64 in data URI", loc=_loc(index)) from exc


def download(url: str, *, index: int = 0, timeout: float = 30.0) -> bytes:
    """GET ``url`` (http or https) with a size cap."""
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise FileDownloadError(
                    f"File download error: HTTP {response.status_code}", loc=_loc(index), input=url
                )
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise FileDownloadError(
                        f"File download error: larger than {MAX_DOWNLOAD_BYTES} bytes",
                        loc=_loc(index),
                        ctx={"max_size": MAX_DOWNLOAD_BYTES},
                        input=url,
                    )
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise FileDownloadError(f"File download error: {exc}", loc=_loc(index), input=url) from exc


def load_image(source: str, *, index: int = 0, allow_local: bool = False) -> Image.Image:
    """A reference image from a ``data:`` URI, an http(s) URL or (``allow_local``) a path."""
    if source.startswith("data:"):
        return decode_image(read_data_uri(source, index=index), index=index, source=source[:64])
    if source.startswith(("http://", "https://")):
        return decode_image(download(source, index=index), index=index, source=source)
    if allow_local:
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FileDownloadError(
                f"Cannot read {path}: {exc.strerror}", loc=_loc(index), input=source
            ) from exc
        return decode_image(data, index=index, source=source)
    raise FileDownloadError(
        "File download error: only http, https and data URLs are accepted",
        loc=_loc(index),
        input=source,
    )
