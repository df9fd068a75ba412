"""Reference images (service/inputs.py): decoding rules, data URIs, and the SSRF-guarded fetch.

Fetches go to real ``ThreadingHTTPServer`` instances on loopback addresses; the guard refuses
them by default, so each test says what it allows.
"""

from __future__ import annotations

import base64
import contextlib
import io
import ipaddress
import random
import resource
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpcore2
import httpx2
import pytest
from PIL import (
    BmpImagePlugin,
    IcoImagePlugin,
    Image,
    PpmImagePlugin,
    PsdImagePlugin,
    TgaImagePlugin,
    TiffImagePlugin,
)

from core.errors import (
    FileDownloadError,
    ImageLoadError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidRequest,
    UnsupportedImageFormat,
)
from service.guard import is_internal
from service.inputs import (
    FetchPolicy,
    decode_image,
    download,
    load_image,
    read_data_uri,
)

# -- helpers ----------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noisy(width: int = 96, height: int = 80, mode: str = "RGB") -> Image.Image:
    pixels = random.Random(1234).randbytes(width * height * len(mode))
    return Image.frombytes(mode, (width, height), pixels)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(width: int, height: int) -> bytes:
    """A tiny hand-made PNG whose IHDR claims ``width x height`` 8-bit greyscale pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def _assert_at(error: InvalidRequest, index: int) -> None:
    """One problem, at ``["body", "image_urls", index]``, typed as the exception's code."""
    assert len(error.problems) == 1
    assert error.problems[0].loc == ("body", "image_urls", index)
    assert error.problems[0].type == error.code


PNG_BYTES = _encode(_noisy(), "PNG")
SUPPORTED = ["png", "jpeg", "webp", "gif"]


# -- decoding: formats ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(_encode(_noisy(), fmt))
    assert image.mode == "RGB"
    assert image.size == (96, 80)


def test_png_decodes_pixel_exact() -> None:
    source = _noisy()
    assert decode_image(PNG_BYTES).tobytes() == source.tobytes()


@pytest.mark.parametrize(("fmt", "options"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_gives_its_first_frame(fmt: str, options: dict[str, Any]) -> None:
    frames = [Image.new("RGB", (96, 80), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **options)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    image = decode_image(data)
    assert image.size == (96, 80)
    assert image.getpixel((40, 40)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("fmt", "named"),
    [("BMP", "BMP"), ("TIFF", "TIFF"), ("PPM", "PPM"), ("ICO", "ICO"), ("TGA", "identify")],
)
def test_other_formats_are_unsupported(fmt: str, named: str) -> None:
    with pytest.raises(UnsupportedImageFormat, match=named) as exc_info:
        decode_image(_encode(_noisy(), fmt), index=2, source="ref")
    _assert_at(exc_info.value, 2)
    assert exc_info.value.problems[0].ctx == {"supported_formats": SUPPORTED}
    assert exc_info.value.problems[0].input == "ref"


OTHER_DECODERS = {
    "BMP": (BmpImagePlugin.BmpImageFile, "BMP"),
    "TIFF": (TiffImagePlugin.TiffImageFile, "TIFF"),
    "PPM": (PpmImagePlugin.PpmImageFile, "PPM"),
    "ICO": (IcoImagePlugin.IcoImageFile, "ICO"),
    "TGA": (TgaImagePlugin.TgaImageFile, "TGA"),
    "PSD": (PsdImagePlugin.PsdImageFile, "PSD"),
}


@pytest.mark.parametrize("fmt", sorted(OTHER_DECODERS))
def test_no_other_decoder_ever_parses_the_bytes(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Untrusted bytes reach only the four supported decoders (``Image.open(formats=...)``)."""
    cls, save_as = OTHER_DECODERS[fmt]
    data = (
        _encode(_noisy().convert("RGB"), save_as)
        if save_as != "PSD"
        else b"8BPS\x00\x01" + b"\x00" * 64
    )
    parsed: list[str] = []

    def spy(self: Any) -> None:
        parsed.append(fmt)
        raise SyntaxError("spy")

    monkeypatch.setattr(cls, "_open", spy)
    with pytest.raises(UnsupportedImageFormat):
        decode_image(data)
    assert parsed == []


def test_decoding_never_touches_the_warning_filters() -> None:
    """``warnings.catch_warnings`` is not thread-safe before Python 3.14; prepare threads decode
    in parallel, so decoding (bombs included) must not use it."""
    real = warnings.catch_warnings
    calls: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("catch_warnings")
        return real(*args, **kwargs)

    warnings.catch_warnings = spy
    try:
        decoded = decode_image(PNG_BYTES)
        refused = []
        for width, height in [(9000, 9000), (10000, 10000), (30000, 30000)]:
            try:
                decode_image(png_header(width, height))
            except ImageTooLarge:
                refused.append((width, height))
    finally:
        warnings.catch_warnings = real
    assert decoded.size == (96, 80)
    assert len(refused) == 3
    assert calls == []


@pytest.mark.parametrize(("width", "height"), [(9000, 9000), (10000, 10000), (16000, 10000)])
def test_too_large_whatever_the_warning_filters_say(width: int, height: int) -> None:
    """PIL only warns between 89 and 179 Mpx; the header check refuses them even where that
    warning is ignored (the default outside the tests is to print it once)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageTooLarge):
            decode_image(png_header(width, height))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not an image at all" * 10,
        b"<html><body>404</body></html>",
        b'{"image": "no"}',
        random.Random(7).randbytes(4096),
        PNG_BYTES[:10],  # cut inside the signature: nothing to identify
    ],
    ids=["empty", "text", "html", "json", "random", "png-signature-only"],
)
def test_garbage_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImageFormat) as exc_info:
        decode_image(data, index=3)
    _assert_at(exc_info.value, 3)
    assert exc_info.value.problems[0].ctx == {"supported_formats": SUPPORTED}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_image_is_a_load_error(fmt: str) -> None:
    data = _encode(_noisy(), fmt)
    with pytest.raises(ImageLoadError) as exc_info:
        decode_image(data[: len(data) // 2], index=1)
    _assert_at(exc_info.value, 1)


def test_truncated_png_says_so() -> None:
    with pytest.raises(ImageLoadError, match="truncated"):
        decode_image(PNG_BYTES[: len(PNG_BYTES) // 2])


# -- decoding: sizes --------------------------------------------------------------------------


def test_pixel_bomb_is_refused_from_the_header_without_allocating() -> None:
    data = png_header(30000, 30000)  # 900 Mpx of 8-bit grey: 900 MB if it were decoded
    assert len(data) < 200
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as exc_info:
        decode_image(data, index=2)
    assert time.perf_counter() - started < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024
    _assert_at(exc_info.value, 2)
    assert exc_info.value.problems[0].ctx == {"max_width": 8192, "max_height": 8192}


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (9000, 9000),  # 81 Mpx: under PIL's own bomb limit, over ours
        (10000, 10000),  # PIL's DecompressionBombWarning range
        (8192, 8193),  # one row too many
        (100_000, 64),  # few pixels, but a side over 8192
    ],
)
def test_declared_size_over_8192_is_too_large(width: int, height: int) -> None:
    with pytest.raises(ImageTooLarge) as exc_info:
        decode_image(png_header(width, height), index=1, source="big.png")
    _assert_at(exc_info.value, 1)
    assert exc_info.value.problems[0].input == "big.png"


def test_declared_size_at_the_limit_is_not_too_large() -> None:
    # 8192 x 8192 passes the size check; this header has no real pixel data, so loading fails.
    with pytest.raises(ImageLoadError):
        decode_image(png_header(8192, 8192))


@pytest.mark.parametrize(("width", "height"), [(1, 1), (63, 200), (200, 63), (63, 63)])
def test_small_image_is_too_small(width: int, height: int) -> None:
    with pytest.raises(ImageTooSmall) as exc_info:
        decode_image(_encode(Image.new("RGB", (width, height)), "PNG"), index=3)
    _assert_at(exc_info.value, 3)
    assert exc_info.value.problems[0].ctx == {"min_width": 64, "min_height": 64}
    assert f"{width}x{height}" in exc_info.value.message


def test_64_pixels_is_enough() -> None:
    assert decode_image(_encode(Image.new("RGB", (64, 64)), "PNG")).size == (64, 64)


# -- decoding: normalisation ------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (100, 64), (255, 0, 0))
    image.paste((0, 0, 255), (50, 0, 100, 64))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (64, 100)
    top, bottom = decoded.getpixel((32, 10)), decoded.getpixel((32, 90))
    assert top[0] > 200
    assert top[2] < 60
    assert bottom[2] > 200
    assert bottom[0] < 60


# Orientation 6 followed by a field whose type does not match its value: PIL reads it, then
# fails re-serialising the EXIF inside ImageOps.exif_transpose (struct.error).
HOSTILE_EXIF = bytes.fromhex(
    "4578696600004d4d002a000000080e02010300020000000463616d00011200030000000100063b000000e900"
)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_exif_never_escapes_as_a_non_fal_error() -> None:
    data = _encode(Image.new("RGB", (80, 80), (1, 2, 3)), "JPEG", exif=HOSTILE_EXIF)
    outcome: Image.Image | InvalidRequest
    try:
        outcome = decode_image(data, index=2)
    except InvalidRequest as exc:
        outcome = exc
    if isinstance(outcome, InvalidRequest):  # refusing it is fine, as a fal error at its index
        _assert_at(outcome, 2)
        assert outcome.code == "image_load_error"
    else:  # so is ignoring the broken EXIF
        assert outcome.mode == "RGB"
        assert outcome.size == (80, 80)


def test_rgba_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (64, 64), (10, 20, 30, 0))  # fully transparent, dark colour
    image.putpixel((1, 0), (200, 0, 0, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))
    decoded = decode_image(_encode(image, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 0)) == (200, 0, 0)
    assert all(126 <= channel <= 128 for channel in decoded.getpixel((2, 0)))


def test_la_transparency_is_composited_on_white() -> None:
    image = Image.new("LA", (64, 64), (0, 0))
    image.putpixel((1, 1), (50, 255))
    decoded = decode_image(_encode(image, "PNG"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (50, 50, 50)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(fmt: str) -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.putpixel((5, 5), 1)
    decoded = decode_image(_encode(image, fmt, transparency=0))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((5, 5)) == (255, 0, 0)


def test_webp_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (64, 64), (0, 255, 0, 0))
    decoded = decode_image(_encode(image, "WEBP", lossless=True))
    assert decoded.getpixel((10, 10)) == (255, 255, 255)


@pytest.mark.parametrize(("mode", "fmt"), [("L", "PNG"), ("1", "PNG"), ("I;16", "PNG")])
def test_other_modes_become_rgb(mode: str, fmt: str) -> None:
    decoded = decode_image(_encode(Image.new(mode, (64, 70)), fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == (64, 70)


def test_cmyk_jpeg_becomes_rgb() -> None:
    decoded = decode_image(_encode(Image.new("CMYK", (64, 64), (0, 0, 0, 0)), "JPEG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((3, 3))[0] > 240


# -- data URIs --------------------------------------------------------------------------------


def test_base64_data_uri() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG_BYTES).decode()
    assert read_data_uri(uri) == PNG_BYTES
    assert load_image(uri).tobytes() == _noisy().tobytes()


def test_base64_data_uri_with_line_breaks() -> None:
    text = base64.encodebytes(PNG_BYTES).decode()  # MIME style: a newline every 76 characters
    assert "\n" in text
    assert read_data_uri("data:image/png;base64," + text) == PNG_BYTES


def test_percent_encoded_data_uri() -> None:
    uri = "data:image/png," + quote_from_bytes(PNG_BYTES)
    assert read_data_uri(uri) == PNG_BYTES
    assert load_image(uri).size == (96, 80)


def test_data_uri_media_type_is_not_trusted() -> None:
    uri = "data:text/plain;base64," + base64.b64encode(PNG_BYTES).decode()
    assert load_image(uri).size == (96, 80)


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("data:image/png;base64", "Malformed data URI"),  # no comma
        ("data:", "Malformed data URI"),
        ("data:image/png;base64,abc", "base64"),  # bad padding
        ("data:image/png;base64,a", "base64"),  # one character too many for a quantum
    ],
)
def test_malformed_data_uri_is_a_load_error(uri: str, match: str) -> None:
    with pytest.raises(ImageLoadError, match=match) as exc_info:
        load_image(uri, index=2)
    _assert_at(exc_info.value, 2)


def test_data_uri_with_garbage_is_unsupported() -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"hello world, no image").decode()
    with pytest.raises(UnsupportedImageFormat) as exc_info:
        load_image(uri, index=3)
    _assert_at(exc_info.value, 3)
    assert exc_info.value.problems[0].input == uri[:64]


def test_data_uri_bomb_is_too_large() -> None:
    uri = "data:image/png;base64," + base64.b64encode(png_header(30000, 30000)).decode()
    with pytest.raises(ImageTooLarge) as exc_info:
        load_image(uri, index=1)
    _assert_at(exc_info.value, 1)


# -- other sources ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "/etc/passwd",
        "HTTP//example.com/a.png",
        "",
    ],
)
def test_other_schemes_are_refused(source: str) -> None:
    with pytest.raises(FileDownloadError, match="only http") as exc_info:
        load_image(source, index=1)
    _assert_at(exc_info.value, 1)


def test_local_path_needs_allow_local(tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    path.write_bytes(PNG_BYTES)
    assert load_image(str(path), allow_local=True).size == (96, 80)
    with pytest.raises(FileDownloadError, match="only http") as exc_info:
        load_image(str(path), index=2)
    _assert_at(exc_info.value, 2)


def test_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(FileDownloadError, match="Cannot read") as exc_info:
        load_image(str(tmp_path / "missing.png"), index=3, allow_local=True)
    _assert_at(exc_info.value, 3)


# -- FetchPolicy and is_internal --------------------------------------------------------------


def test_policy_from_text() -> None:
    policy = FetchPolicy.from_text("a.example, 10.0.0.0/8, *")
    assert policy.allow == ("a.example", "10.0.0.0/8")
    assert policy.allow_all
    assert policy.address_allowed(ipaddress.ip_address("127.0.0.1"))


def test_policy_from_text_without_star() -> None:
    policy = FetchPolicy.from_text(" A.Example. ,, 10.0.0.0/8 ,fd00::/8", max_bytes=10)
    assert not policy.allow_all
    assert policy.max_bytes == 10
    assert policy.host_allowed("a.example")
    assert policy.host_allowed("A.EXAMPLE.")
    assert not policy.host_allowed("b.example")
    assert not policy.host_allowed("sub.a.example")
    assert policy.address_allowed(ipaddress.ip_address("10.1.2.3"))
    assert policy.address_allowed(ipaddress.ip_address("fd12::1"))
    assert not policy.address_allowed(ipaddress.ip_address("192.168.1.1"))
    assert not policy.address_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.address_allowed(ipaddress.ip_address("8.8.8.8"))


def test_empty_policy_text_is_the_default() -> None:
    policy = FetchPolicy.from_text("")
    assert policy == FetchPolicy()
    assert not policy.allow_all
    assert not policy.address_allowed(ipaddress.ip_address("10.0.0.1"))


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("127.0.0.1", True),
        ("127.255.255.254", True),
        ("10.0.0.1", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("100.64.0.1", True),  # carrier-grade NAT
        ("100.100.100.200", True),  # Alibaba metadata, inside 100.64/10
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("240.0.0.1", True),
        ("192.0.0.1", True),
        ("198.18.0.1", True),
        ("::1", True),
        ("::", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("::ffff:169.254.169.254", True),
        ("::ffff:10.1.1.1", True),
        ("fd00::1", True),  # unique local
        ("fe80::1", True),  # link local
        ("ff02::1", True),  # multicast
        ("2001:db8::1", True),  # documentation
        ("fec0::1", True),  # site-local (deprecated, still routed inside some networks)
        ("fec0:1:2::abcd", True),
        ("2002:a9fe:a9fe::1", True),  # 6to4 for 169.254.169.254 (cloud metadata)
        ("2002:7f00:1::1", True),  # 6to4 for 127.0.0.1
        ("2002:a00:1::", True),  # 6to4 for 10.0.0.1
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 for 169.254.169.254
        ("64:ff9b::7f00:1", True),  # NAT64 for 127.0.0.1
        ("64:ff9b::c0a8:101", True),  # NAT64 for 192.168.1.1
        ("64:ff9b:1::808:808", True),  # local-use NAT64 prefix: never public
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),  # Teredo
        ("2001:0:a9fe:a9fe::1", True),  # Teredo with the metadata address as its server
        ("::127.0.0.1", True),  # IPv4-compatible loopback
        ("::a9fe:a9fe", True),  # IPv4-compatible metadata
        ("::8.8.8.8", True),  # IPv4-compatible: deprecated, never routed as such
        ("::ffff:0:7f00:1", True),  # IPv4-translated loopback (RFC 2765)
        ("8.8.8.8", False),
        ("1.1.1.1", False),
        ("93.184.216.34", False),
        ("::ffff:8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("2002:808:808::1", False),  # 6to4 for a public address
        ("64:ff9b::808:808", False),  # NAT64 for a public address (IPv6-only networks)
    ],
)
def test_is_internal(address: str, internal: bool) -> None:
    assert is_internal(ipaddress.ip_address(address)) is internal


# -- fetching: test servers -------------------------------------------------------------------


Route = Callable[[BaseHTTPRequestHandler], None]


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


def _chunked(handler: BaseHTTPRequestHandler, total: int) -> None:
    """A chunked response (no Content-Length) of ``total`` zero bytes, 1000 at a time."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    sent = 0
    while sent < total:
        handler.wfile.write(b"3e8\r\n" + b"\0" * 1000 + b"\r\n")
        sent += 1000
    handler.wfile.write(b"0\r\n\r\n")
    handler.close_connection = True


def _unsized(handler: BaseHTTPRequestHandler, total: int) -> None:
    """An HTTP/1.0 response delimited by closing the connection (no length, not chunked)."""
    handler.wfile.write(b"HTTP/1.0 200 OK\r\n\r\n" + b"\0" * total)
    handler.close_connection = True


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            _send(self, 404, b"no such file")
        else:
            route(self)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server on ``host``; ``hits`` records every path requested."""

    def __init__(self, host: str, routes: dict[str, Route]) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, 0), _Handler)
        self.routes = routes
        self.hits: list[str] = []
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def url(self, path: str, host: str | None = None) -> str:
        host = host or self.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{path}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # clients hanging up mid-body are expected here

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


def _routes() -> dict[str, Route]:
    return {
        "/x.png": lambda h: _send(h, 200, PNG_BYTES, Content_Type="image/png"),
        "/x.txt": lambda h: _send(h, 200, PNG_BYTES, Content_Type="text/plain"),
        "/page.html": lambda h: _send(h, 200, b"<html>hi</html>", Content_Type="image/png"),
        "/boom": lambda h: _send(h, 500, b"error"),
        "/big": lambda h: _send(h, 200, b"\0" * 5000),
        "/chunked": lambda h: _chunked(h, 20_000),
        "/unsized": lambda h: _unsized(h, 20_000),
        **{
            f"/hop/{n}": (
                lambda h, n=n: _send(h, 302, b"", Location=f"/hop/{n - 1}" if n else "/x.png")
            )
            for n in range(8)
        },
    }


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server("127.0.0.1", _routes())
    try:
        yield httpd
    finally:
        httpd.stop()


@pytest.fixture
def other_server(server: _Server) -> Iterator[_Server]:
    """On 127.0.0.2; ``/to-private`` redirects to ``server`` (127.0.0.1), ``/to-self`` to itself."""
    routes = _routes()
    routes["/to-private"] = lambda h: _send(h, 302, b"", Location=server.url("/x.png"))
    httpd = _Server("127.0.0.2", routes)
    routes["/to-self"] = lambda h: _send(h, 302, b"", Location=httpd.url("/x.png"))
    try:
        yield httpd
    finally:
        httpd.stop()


LOOPBACK = FetchPolicy(allow=("127.0.0.0/8",))


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- fetching: the SSRF guard -----------------------------------------------------------------


def test_loopback_is_refused_by_default(server: _Server) -> None:
    url = server.url("/x.png")
    started = time.perf_counter()
    with pytest.raises(FileDownloadError, match=r"127\.0\.0\.1") as exc_info:
        load_image(url, index=2)
    assert time.perf_counter() - started < 1.0
    _assert_at(exc_info.value, 2)
    assert exc_info.value.problems[0].input == url
    assert server.hits == []  # refused before any request was sent


def test_localhost_is_refused_by_default(server: _Server) -> None:
    with pytest.raises(FileDownloadError, match=r"127\.0\.0\.1") as exc_info:
        load_image(server.url("/x.png", host="localhost"), index=1)
    _assert_at(exc_info.value, 1)
    assert server.hits == []


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_loopback_is_refused_by_default() -> None:
    httpd = _Server("::1", _routes())
    try:
        with pytest.raises(FileDownloadError, match="::1") as exc_info:
            load_image(httpd.url("/x.png"), index=3)
        _assert_at(exc_info.value, 3)
        assert httpd.hits == []
        allowed = load_image(httpd.url("/x.png"), policy=FetchPolicy(allow=("::1/128",)))
        assert allowed.size == (96, 80)
    finally:
        httpd.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.png",  # private and (here) unroutable: must not wait for a connect
        "http://10.255.255.1:8080/x.png",
        "http://192.168.0.1/x.png",
        "http://172.16.5.4/x.png",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://0.0.0.0/x.png",
        "http://224.0.0.1/x.png",
        "http://100.64.0.1/x.png",
        "http://[fd00::1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",  # IPv4-mapped loopback
        "http://[::ffff:169.254.169.254]/x.png",
        "http://[2002:a9fe:a9fe::1]/latest/meta-data/",  # 6to4 for the metadata address
        "http://[2002:7f00:1::1]/x.png",  # 6to4 for loopback
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 for the metadata address
        "http://[64:ff9b::7f00:1]/x.png",  # NAT64 for loopback
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.png",  # Teredo
        "http://[fec0::1]/x.png",  # site-local
        "http://[::127.0.0.1]/x.png",  # IPv4-compatible loopback
        "http://0x7f000001/x.png",  # 127.0.0.1 as one hex number
        "http://2130706433/x.png",  # 127.0.0.1 as one decimal number
        "http://0x7f.1/x.png",  # and in hex shorthand
        "http://127.1/x.png",
        "http://user:pass@127.0.0.1/x.png",
        "https://127.0.0.1/x.png",
    ],
)
def test_internal_addresses_are_refused_before_connecting(url: str) -> None:
    started = time.perf_counter()
    with pytest.raises(FileDownloadError, match="refused to fetch") as exc_info:
        load_image(url, index=1)
    assert time.perf_counter() - started < 1.0
    _assert_at(exc_info.value, 1)
    assert exc_info.value.problems[0].input == url


@pytest.mark.parametrize(
    "policy",
    [
        LOOPBACK,
        FetchPolicy(allow=("127.0.0.1",)),
        FetchPolicy.from_text("127.0.0.0/8"),
        FetchPolicy(allow_all=True),
        FetchPolicy.from_text("*"),
    ],
    ids=["network", "address", "from-text", "allow-all", "star"],
)
def test_allowed_loopback_is_fetched(server: _Server, policy: FetchPolicy) -> None:
    assert download(server.url("/x.png"), policy=policy) == PNG_BYTES
    image = load_image(server.url("/x.png"), index=1, policy=policy)
    assert image.size == (96, 80)
    assert server.hits == ["/x.png", "/x.png"]


def test_allowed_host_name_is_fetched(server: _Server) -> None:
    url = server.url("/x.png", host="localhost")
    assert download(url, policy=FetchPolicy(allow=("localhost",))) == PNG_BYTES
    assert download(url, policy=FetchPolicy(allow=("LOCALHOST.",))) == PNG_BYTES


def test_allowed_host_name_does_not_allow_its_address(server: _Server) -> None:
    with pytest.raises(FileDownloadError, match="refused"):
        download(server.url("/x.png"), policy=FetchPolicy(allow=("localhost",)))
    assert server.hits == []


def test_allowed_network_does_not_allow_its_neighbours(other_server: _Server) -> None:
    policy = FetchPolicy(allow=("127.0.0.1/32",))
    with pytest.raises(FileDownloadError, match=r"127\.0\.0\.2"):
        download(other_server.url("/x.png"), policy=policy)
    assert other_server.hits == []


def test_redirect_to_a_private_address_is_refused(server: _Server, other_server: _Server) -> None:
    policy = FetchPolicy(allow=("127.0.0.2/32",))
    assert download(other_server.url("/x.png"), policy=policy) == PNG_BYTES  # allowed host
    with pytest.raises(FileDownloadError, match=r"127\.0\.0\.1") as exc_info:
        load_image(other_server.url("/to-private"), index=3, policy=policy)
    _assert_at(exc_info.value, 3)
    assert other_server.hits == ["/x.png", "/to-private"]
    assert server.hits == []  # the redirect target was never contacted


def test_redirect_within_the_allowed_host_is_followed(other_server: _Server) -> None:
    policy = FetchPolicy(allow=("127.0.0.2/32",))
    assert download(other_server.url("/to-self"), policy=policy) == PNG_BYTES


def test_guard_connects_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolved once, in the connection: a public address wins, internal ones are never used."""
    public, internal = "93.184.216.34", "127.0.0.1"

    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        assert host == "mixed.example"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (internal, port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (public, port)),
        ]

    connected: list[str] = []

    def fake_connect(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        connected.append(host)
        raise httpcore2.ConnectError("test: no network")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(httpcore2.SyncBackend, "connect_tcp", fake_connect)
    with pytest.raises(FileDownloadError):
        download("http://mixed.example/x.png")
    assert connected == [public]


def test_host_resolving_only_to_internal_addresses_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(FileDownloadError, match=r"rebind\.example.*10\.1\.2\.3") as exc_info:
        load_image("http://rebind.example/x.png", index=2)
    _assert_at(exc_info.value, 2)
    assert "::1" in exc_info.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/x.png",  # unclosed IPv6 bracket: httpx2.InvalidURL
        "http://[v1.x]/x.png",  # not an IPv6 address: httpx2.InvalidURL
        "http://127.0.0.1\t/x.png",  # control character: httpx2.InvalidURL
        "http://a..b/x.png",  # empty DNS label: UnicodeError from the idna codec
        "http://" + "a" * 64 + ".example/x.png",  # label over 63 characters: UnicodeError
        "http://xn--/x.png",  # malformed punycode: idna.IDNAError
    ],
)
def test_malformed_url_is_a_download_error(url: str) -> None:
    with pytest.raises(FileDownloadError) as exc_info:
        load_image(url, index=1)
    _assert_at(exc_info.value, 1)


# -- fetching: limits and failures ------------------------------------------------------------


def test_bytes_are_sniffed_not_the_content_type(server: _Server) -> None:
    assert load_image(server.url("/x.txt"), policy=LOOPBACK).size == (96, 80)
    with pytest.raises(UnsupportedImageFormat) as exc_info:
        load_image(server.url("/page.html"), index=2, policy=LOOPBACK)
    _assert_at(exc_info.value, 2)


def test_redirects_are_followed_up_to_the_limit(server: _Server) -> None:
    policy = FetchPolicy(allow=("127.0.0.0/8",), max_redirects=2)
    assert download(server.url("/hop/1"), policy=policy) == PNG_BYTES  # 2 redirects
    with pytest.raises(FileDownloadError, match="more than 2 redirects") as exc_info:
        load_image(server.url("/hop/2"), index=1, policy=policy)  # 3 redirects
    _assert_at(exc_info.value, 1)


def test_default_redirect_limit() -> None:
    assert FetchPolicy().max_redirects == 5


@pytest.mark.parametrize(("path", "status"), [("/missing.png", "404"), ("/boom", "500")])
def test_http_error_status(server: _Server, path: str, status: str) -> None:
    url = server.url(path)
    with pytest.raises(FileDownloadError, match=f"HTTP {status}") as exc_info:
        load_image(url, index=2, policy=LOOPBACK)
    _assert_at(exc_info.value, 2)
    assert exc_info.value.problems[0].input == url


@pytest.mark.parametrize("path", ["/big", "/chunked", "/unsized"])
def test_body_over_max_bytes(server: _Server, path: str) -> None:
    policy = FetchPolicy(allow=("127.0.0.0/8",), max_bytes=1000)
    with pytest.raises(FileDownloadError, match="larger than 1000 bytes") as exc_info:
        load_image(server.url(path), index=1, policy=policy)
    _assert_at(exc_info.value, 1)
    assert exc_info.value.problems[0].ctx == {"max_size": 1000}


@pytest.mark.parametrize(("path", "size"), [("/big", 5000), ("/chunked", 20_000)])
def test_body_at_max_bytes_is_fine(server: _Server, path: str, size: int) -> None:
    policy = FetchPolicy(allow=("127.0.0.0/8",), max_bytes=size)
    assert len(download(server.url(path), policy=policy)) == size


def test_connection_refused() -> None:
    # A bound socket that never listens refuses connections, and keeps the port ours.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/x.png"
        with pytest.raises(FileDownloadError, match="^File download error") as exc_info:
            load_image(url, index=3, policy=LOOPBACK)
    _assert_at(exc_info.value, 3)


def test_read_timeout() -> None:
    """A server that accepts the connection (the kernel does) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
        policy = FetchPolicy(allow=("127.0.0.0/8",), read_timeout=0.3)
        started = time.perf_counter()
        with pytest.raises(FileDownloadError) as exc_info:
            load_image(url, index=1, policy=policy)
        assert time.perf_counter() - started < 2.0
    _assert_at(exc_info.value, 1)
    assert isinstance(exc_info.value.__cause__, httpx2.ReadTimeout)


def test_download_timeout_argument_wins(server: _Server) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
        started = time.perf_counter()
        with pytest.raises(FileDownloadError):
            download(url, policy=LOOPBACK, timeout=0.2)  # the policy says 30 s
        assert time.perf_counter() - started < 2.0


def test_connect_timeout() -> None:
    """A listener whose accept queue is full: Linux drops further SYNs, so connect hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
            time.sleep(0.05)
            policy = FetchPolicy(allow=("127.0.0.0/8",), connect_timeout=0.3, read_timeout=10)
            started = time.perf_counter()
            with pytest.raises(FileDownloadError) as exc_info:
                load_image(f"http://127.0.0.1:{port}/x.png", index=2, policy=policy)
            elapsed = time.perf_counter() - started
        finally:
            for filler in fillers:
                filler.close()
    _assert_at(exc_info.value, 2)
    if not isinstance(exc_info.value.__cause__, httpx2.ConnectTimeout):
        pytest.skip("this kernel accepted the connection despite the full backlog")
    assert elapsed < 2.0
