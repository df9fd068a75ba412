"""Reading reference images: data URIs, http(s) downloads and local paths (service/inputs.py)."""

from __future__ import annotations

import base64
import io
import os
import random
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from PIL import Image

import service.inputs
from service.errors import (
    FileDownloadError,
    ImageLoadError,
    ImageTooLarge,
    InvalidRequest,
    UnsupportedImageFormat,
)
from service.inputs import decode_image, download, load_image, read_data_uri


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _noisy(width: int = 48, height: int = 32, mode: str = "RGB") -> Image.Image:
    pixels = random.Random(1234).randbytes(width * height * len(mode))
    return Image.frombytes(mode, (width, height), pixels)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` (1-bit greyscale) with a token IDAT chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _assert_at(error: InvalidRequest, index: int) -> None:
    assert len(error.problems) == 1
    assert error.problems[0].loc == ("body", "image_urls", index)
    assert error.problems[0].type == error.code


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(_encode(_noisy(), fmt))
    assert image.mode == "RGB"
    assert image.size == (48, 32)


def test_png_decodes_pixel_exact() -> None:
    source = _noisy()
    assert decode_image(_encode(source, "PNG")).tobytes() == source.tobytes()


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "1"])
def test_other_modes_are_converted_to_rgb(mode: str) -> None:
    image = decode_image(_encode(Image.new(mode, (20, 10)), "PNG"))
    assert image.mode == "RGB"
    assert image.size == (20, 10)


@pytest.mark.parametrize("index", [0, 3])
def test_garbage_bytes_are_unsupported(index: int) -> None:
    with pytest.raises(UnsupportedImageFormat) as exc_info:
        decode_image(b"this is not an image at all" * 10, index=index, source="x")
    _assert_at(exc_info.value, index)
    assert "png" in exc_info.value.problems[0].ctx["supported_formats"]
    assert exc_info.value.problems[0].input == "x"


def test_empty_bytes_are_unsupported() -> None:
    with pytest.raises(UnsupportedImageFormat):
        decode_image(b"")


def test_format_outside_the_list_is_unsupported() -> None:
    data = _encode(_noisy(8, 8), "PPM")
    with pytest.raises(UnsupportedImageFormat, match="PPM") as exc_info:
        decode_image(data, index=1)
    _assert_at(exc_info.value, 1)


def test_truncated_png_is_an_image_load_error() -> None:
    data = _encode(_noisy(64, 64), "PNG")
    with pytest.raises(ImageLoadError) as exc_info:
        decode_image(data[: len(data) // 2], index=2)
    _assert_at(exc_info.value, 2)
    assert "truncated" in exc_info.value.message


def test_png_cut_inside_the_signature_is_unsupported() -> None:
    data = _encode(_noisy(), "PNG")
    with pytest.raises(UnsupportedImageFormat):
        decode_image(data[:10])


@pytest.mark.parametrize(
    "side",
    [
        9000,  # 81 Mpx: under PIL's bomb limit, over ours (8192 x 8192)
        10000,  # 100 Mpx: PIL's DecompressionBombWarning
        20000,  # 400 Mpx: PIL's DecompressionBombError
    ],
)
def test_huge_declared_size_is_too_large(side: int) -> None:
    with pytest.raises(ImageTooLarge) as exc_info:
        decode_image(_png_header(side, side), index=1)
    _assert_at(exc_info.value, 1)
    assert exc_info.value.problems[0].ctx["max_width"] == 8192


def test_too_large_names_the_declared_size() -> None:
    with pytest.raises(ImageTooLarge, match="9000x8000") as exc_info:
        decode_image(_png_header(9000, 8000), index=0, source="big.png")
    assert exc_info.value.problems[0].ctx == {"max_width": 8192, "max_height": 8192}
    assert exc_info.value.problems[0].input == "big.png"


def test_declared_size_at_the_limit_is_not_too_large() -> None:
    # 8192 x 8192 is allowed; this header has no real pixel data, so loading it fails later.
    with pytest.raises(ImageLoadError):
        decode_image(_png_header(8192, 8192))


# -- data URIs --------------------------------------------------------------------------------


def test_base64_data_uri() -> None:
    source = _noisy()
    uri = "data:image/png;base64," + base64.b64encode(_encode(source, "PNG")).decode()
    image = load_image(uri)
    assert image.mode == "RGB"
    assert image.tobytes() == source.tobytes()


def test_percent_encoded_data_uri() -> None:
    data = _encode(_noisy(8, 8), "PNG")
    assert read_data_uri("data:image/png," + quote_from_bytes(data)) == data
    assert load_image("data:image/png," + quote_from_bytes(data)).size == (8, 8)


def test_data_uri_without_comma() -> None:
    with pytest.raises(ImageLoadError, match="Malformed data URI") as exc_info:
        load_image("data:image/png;base64", index=2)
    _assert_at(exc_info.value, 2)


def test_data_uri_with_bad_base64() -> None:
    with pytest.raises(ImageLoadError, match="base64") as exc_info:
        load_image("data:image/png;base64,abc", index=1)
    _assert_at(exc_info.value, 1)


def test_data_uri_with_garbage_is_unsupported() -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"hello world, no image").decode()
    with pytest.raises(UnsupportedImageFormat) as exc_info:
        load_image(uri, index=3)
    _assert_at(exc_info.value, 3)
    assert exc_info.value.problems[0].input == uri[:64]


# -- local paths ------------------------------------------------------------------------------


def test_local_path_needs_allow_local(tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    path.write_bytes(_encode(_noisy(), "PNG"))
    assert load_image(str(path), allow_local=True).size == (48, 32)
    with pytest.raises(FileDownloadError, match="only http") as exc_info:
        load_image(str(path), index=2)
    _assert_at(exc_info.value, 2)


@pytest.mark.parametrize("source", ["file:///etc/hostname", "ftp://example.com/a.png"])
def test_other_schemes_are_refused(source: str) -> None:
    with pytest.raises(FileDownloadError) as exc_info:
        load_image(source, index=1)
    _assert_at(exc_info.value, 1)


def test_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(FileDownloadError, match="Cannot read") as exc_info:
        load_image(str(tmp_path / "missing.png"), index=3, allow_local=True)
    _assert_at(exc_info.value, 3)


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(FileDownloadError) as exc_info:
        load_image(str(tmp_path), index=0, allow_local=True)
    _assert_at(exc_info.value, 0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_local_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    path.write_bytes(_encode(_noisy(), "PNG"))
    path.chmod(0)
    with pytest.raises(FileDownloadError):
        load_image(str(path), allow_local=True)


def test_local_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a png")
    with pytest.raises(UnsupportedImageFormat) as exc_info:
        load_image(str(path), index=1, allow_local=True)
    _assert_at(exc_info.value, 1)


# -- http downloads ---------------------------------------------------------------------------


PNG_BYTES = _encode(_noisy(40, 24), "PNG")
Route = Callable[[BaseHTTPRequestHandler], None]


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


ROUTES: dict[str, Route] = {
    "/ok.png": lambda h: _send(h, 200, PNG_BYTES, Content_Type="image/png"),
    "/big.bin": lambda h: _send(h, 200, b"\0" * 5000),
    "/garbage.png": lambda h: _send(h, 200, b"<html>not found</html>"),
    "/moved": lambda h: _send(h, 302, b"", Location="/ok.png"),
    "/boom": lambda h: _send(h, 500, b"error"),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        route = ROUTES.get(self.path)
        if route is None:
            _send(self, 404, b"no such file")
        else:
            route(self)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_http_200(server: str) -> None:
    assert download(server + "/ok.png") == PNG_BYTES
    image = load_image(server + "/ok.png", index=1)
    assert image.mode == "RGB"
    assert image.size == (40, 24)


def test_http_redirect_is_followed(server: str) -> None:
    assert download(server + "/moved") == PNG_BYTES


@pytest.mark.parametrize(("path", "status"), [("/missing.png", "404"), ("/boom", "500")])
def test_http_error_status(server: str, path: str, status: str) -> None:
    url = server + path
    with pytest.raises(FileDownloadError, match=status) as exc_info:
        load_image(url, index=2)
    _assert_at(exc_info.value, 2)
    assert exc_info.value.problems[0].input == url


def test_connection_refused() -> None:
    # A bound socket that never listens refuses connections, and keeps the port ours.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/ok.png"
        with pytest.raises(FileDownloadError) as exc_info:
            load_image(url, index=3)
    _assert_at(exc_info.value, 3)
    assert exc_info.value.message.startswith("File download error")


def test_body_over_the_size_cap(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.inputs, "MAX_DOWNLOAD_BYTES", 1000)
    with pytest.raises(FileDownloadError, match="larger than 1000 bytes") as exc_info:
        load_image(server + "/big.bin", index=1)
    _assert_at(exc_info.value, 1)
    assert exc_info.value.problems[0].ctx == {"max_size": 1000}


def test_body_at_the_size_cap_is_fine(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.inputs, "MAX_DOWNLOAD_BYTES", 5000)
    assert len(download(server + "/big.bin")) == 5000


def test_downloaded_garbage_is_unsupported(server: str) -> None:
    with pytest.raises(UnsupportedImageFormat) as exc_info:
        load_image(server + "/garbage.png", index=1)
    _assert_at(exc_info.value, 1)
