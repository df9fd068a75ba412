"""Reading reference images: ``data:`` URIs, http(s) URLs, and (CLI only) local paths.

Hostile input gets a clear, fal-typed :class:`InvalidRequest` at ``["body", "image_urls", i]``:

* ``file_download_error``: unreachable, HTTP error, too big, too many redirects, or a forbidden
  address (SSRF guard, below);
* ``unsupported_image_format``: anything but PNG, JPEG, WebP or GIF (sniffed from the bytes, never
  from the client's content type);
* ``image_load_error``: corrupt or truncated bytes;
* ``image_too_large``: more than 8192x8192 pixels, refused from the header before decoding;
* ``image_too_small``: a side under 64 pixels.

Decoded images have their EXIF orientation applied, transparency composited onto white, and the
first frame of an animation.

**SSRF guard.** Downloads go through :mod:`service.guard`: by default only public addresses are
fetched, checked on the address actually connected to, for the first request and every redirect.
Operators allow on-prem stores with :class:`FetchPolicy` ``allow`` entries: host names or networks
(``images.internal``, ``10.20.0.0/16``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import httpx2
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import (
    FileDownloadError,
    ImageLoadError,
    ImageTooLarge,
    ImageTooSmall,
    UnsupportedImageFormat,
)
from service.guard import AddressPolicy, guarded_client

if TYPE_CHECKING:
    from service.settings import FetchSettings

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
MIN_SIDE = 64


def _loc(index: int) -> tuple[str | int, ...]:
    return ("body", "image_urls", index)


def _formats_ctx() -> dict[str, Any]:
    return {"supported_formats": [f.lower() for f in SUPPORTED_FORMATS]}


# -- decoding ----------------------------------------------------------------------------------


def decode_image(data: bytes, *, index: int = 0, source: str | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image, or raise a fal-typed error.

    Only the PNG, JPEG, WebP and GIF decoders ever see the bytes (``formats=``), and the size is
    checked from the header before any pixel is decoded. No warning filter is touched: changing
    them (``warnings.catch_warnings``) is not thread-safe before Python 3.14, and images are
    decoded on several threads at once.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        if image.format not in SUPPORTED_FORMATS:  # e.g. MPO, which the JPEG decoder returns
            raise UnsupportedImageFormat(
                f"Unsupported image format {image.format}; use PNG, JPEG, WebP or GIF",
                loc=_loc(index),
                ctx=_formats_ctx(),
                input=source,
            )
        _check_dimensions(image.width, image.height, index=index, source=source)
        if getattr(image, "is_animated", False):
            image.seek(0)
        image.load()
    # PIL refuses over 2x its MAX_IMAGE_PIXELS (179 Mpx) by itself, and warns above it (89 Mpx):
    # that warning is an exception only where the caller's filters make it one (pytest's do).
    # Either way it is over our own limit, which the header check above enforces.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"Image is too large; at most {MAX_SIDE}x{MAX_SIDE} pixels",
            loc=_loc(index),
            ctx={"max_width": MAX_SIDE, "max_height": MAX_SIDE},
            input=source,
        ) from exc
    except UnidentifiedImageError as exc:
        other = _other_format(data)
        raise UnsupportedImageFormat(
            f"Unsupported image format {other}; use PNG, JPEG, WebP or GIF"
            if other
            else "Could not identify the image format; use PNG, JPEG, WebP or GIF",
            loc=_loc(index),
            ctx=_formats_ctx(),
            input=source,
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"Could not load image: {exc}", loc=_loc(index), input=source) from exc
    return _normalise(image)


def sniff_image(data: bytes, *, loc: tuple[str | int, ...]) -> str:
    """The content type of image ``data``, from its header only (nothing is decoded): one of
    the four supported formats, within the size limits; the errors :func:`decode_image` raises
    (located at ``loc``) otherwise."""
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as image:
            fmt, width, height = image.format, image.width, image.height
    except UnidentifiedImageError as exc:
        other = _other_format(data)
        raise UnsupportedImageFormat(
            f"Unsupported image format {other}; use PNG, JPEG, WebP or GIF"
            if other
            else "Not an image (or a format other than PNG, JPEG, WebP or GIF)",
            loc=loc,
            ctx=_formats_ctx(),
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"Image is too large; at most {MAX_SIDE}x{MAX_SIDE} pixels",
            loc=loc,
            ctx={"max_width": MAX_SIDE, "max_height": MAX_SIDE},
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"Could not read the image: {exc}", loc=loc) from exc
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImageFormat(
            f"Unsupported image format {fmt}; use PNG, JPEG, WebP or GIF",
            loc=loc,
            ctx=_formats_ctx(),
        )
    if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_SIDE:
        raise ImageTooLarge(
            f"Image is {width}x{height}; at most {MAX_SIDE}x{MAX_SIDE} pixels",
            loc=loc,
            ctx={"max_width": MAX_SIDE, "max_height": MAX_SIDE},
        )
    return f"image/{fmt.lower()}"


# Signatures of common formats we do not decode, only to name them in the error (never parsed).
_OTHER_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"8BPS", "PSD"),
    (0, b"qoif", "QOI"),
    (0, b"\xffO\xffQ", "JPEG 2000"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (0, b"%PDF", "PDF"),
    *((0, f"P{n}".encode(), "PPM") for n in range(1, 8)),
)


def _other_format(data: bytes) -> str | None:
    for offset, signature, name in _OTHER_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name
    return None


def _check_dimensions(width: int, height: int, *, index: int, source: str | None) -> None:
    if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_SIDE:
        raise ImageTooLarge(
            f"Image is {width}x{height}; at most {MAX_SIDE}x{MAX_SIDE} pixels",
            loc=_loc(index),
            ctx={"max_width": MAX_SIDE, "max_height": MAX_SIDE},
            input=source,
        )
    if min(width, height) < MIN_SIDE:
        raise ImageTooSmall(
            f"Image is {width}x{height}; each side must be at least {MIN_SIDE} pixels",
            loc=_loc(index),
            ctx={"min_width": MIN_SIDE, "min_height": MIN_SIDE},
            input=source,
        )


def _normalise(image: Image.Image) -> Image.Image:
    """EXIF orientation applied; transparency composited onto white; RGB."""
    with contextlib.suppress(Exception):  # a malformed EXIF block: keep the pixels as stored
        image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def read_data_uri(uri: str, *, index: int = 0) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise ImageLoadError("Malformed data URI", loc=_loc(index), input=uri[:64])
    try:
        if header.lower().endswith(";base64"):
            return base64.b64decode("".join(payload.split()), validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise ImageLoadError("Malformed base64 in data URI", loc=_loc(index)) from exc


# -- fetching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchPolicy(AddressPolicy):
    """How reference images may be fetched: the addresses (:class:`AddressPolicy`: ``allow``,
    ``allow_all``) and the limits of one download.

    Args:
        max_bytes, connect_timeout, read_timeout, max_redirects: limits per download.
    """

    max_bytes: int = MAX_DOWNLOAD_BYTES
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_redirects: int = 5

    @classmethod
    def from_settings(cls, fetch: FetchSettings) -> FetchPolicy:
        """The policy ``FLUX2_FETCH_ALLOW`` and the download limits describe."""
        return cls.from_text(
            fetch.fetch_allow,
            max_bytes=fetch.fetch_max_bytes,
            read_timeout=fetch.fetch_timeout_seconds,
        )


def download(
    url: str, *, index: int = 0, policy: FetchPolicy | None = None, timeout: float | None = None
) -> bytes:
    """GET ``url`` (http or https) within ``policy``'s limits and address rules."""
    chunks: list[bytes] = []
    fetch_to(url, chunks.append, loc=_loc(index), policy=policy, timeout=timeout)
    return b"".join(chunks)


def fetch_to(
    url: str,
    write: Callable[[bytes], object],
    *,
    loc: tuple[str | int, ...],
    policy: FetchPolicy | None = None,
    timeout: float | None = None,
) -> int:
    """GET ``url`` through the SSRF guard, handing the body to ``write`` chunk by chunk; the
    number of bytes. Every failure is a :class:`FileDownloadError` located at ``loc`` (a
    reference image's, or a LoRA's path)."""
    policy = policy or FetchPolicy()
    timeouts = httpx2.Timeout(
        timeout if timeout is not None else policy.read_timeout,
        connect=policy.connect_timeout,
    )
    try:
        with (
            guarded_client(
                policy, timeout=timeouts, follow_redirects=True, max_redirects=policy.max_redirects
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise FileDownloadError(
                    f"File download error: HTTP {response.status_code}", loc=loc, input=url
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise _too_big(url, loc, policy)
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise _too_big(url, loc, policy)
                write(chunk)
            return size
    except httpx2.TooManyRedirects as exc:
        raise FileDownloadError(
            f"File download error: more than {policy.max_redirects} redirects",
            loc=loc,
            input=url,
        ) from exc
    except (httpx2.HTTPError, httpx2.InvalidURL, ValueError) as exc:  # ValueError: bad IDNA host
        reason = str(exc) or type(exc).__name__
        raise FileDownloadError(f"File download error: {reason}", loc=loc, input=url) from exc


def _too_big(url: str, loc: tuple[str | int, ...], policy: FetchPolicy) -> FileDownloadError:
    return FileDownloadError(
        f"File download error: larger than {policy.max_bytes} bytes",
        loc=loc,
        ctx={"max_size": policy.max_bytes},
        input=url,
    )


def load_image(
    source: str,
    *,
    index: int = 0,
    allow_local: bool = False,
    policy: FetchPolicy | None = None,
) -> Image.Image:
    """A reference image from a ``data:`` URI, an http(s) URL or (``allow_local``) a path."""
    if source.startswith("data:"):
        return decode_image(read_data_uri(source, index=index), index=index, source=source[:64])
    if source.startswith(("http://", "https://")):
        data = download(source, index=index, policy=policy)
        return decode_image(data, index=index, source=source)
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
