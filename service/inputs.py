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

**SSRF guard.** By default the server fetches only from public addresses: loopback, private,
link-local (cloud metadata at 169.254.169.254 included), multicast, reserved and unspecified
addresses are refused. The check happens in the connection itself, on the address actually
connected to, for the first request and for every redirect, so DNS rebinding cannot slip past it.
Operators allow on-prem stores with :class:`FetchPolicy` ``allow`` entries: host names or networks
(``images.internal``, ``10.20.0.0/16``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import ipaddress
import socket
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import httpcore
import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import (
    FileDownloadError,
    ImageLoadError,
    ImageTooLarge,
    ImageTooSmall,
    UnsupportedImageFormat,
)

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
MAX_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
MIN_SIDE = 64

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _loc(index: int) -> tuple[str | int, ...]:
    return ("body", "image_urls", index)


def _formats_ctx() -> dict[str, Any]:
    return {"supported_formats": [f.lower() for f in SUPPORTED_FORMATS]}


# -- decoding ----------------------------------------------------------------------------------


def decode_image(data: bytes, *, index: int = 0, source: str | None = None) -> Image.Image:
    """Decode image bytes into an RGB PIL image, or raise a fal-typed error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in SUPPORTED_FORMATS:
                raise UnsupportedImageFormat(
                    f"Unsupported image format {image.format}; use PNG, JPEG, WebP or GIF",
                    loc=_loc(index),
                    ctx=_formats_ctx(),
                    input=source,
                )
            _check_dimensions(image.width, image.height, index=index, source=source)
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"Image is too large; at most {MAX_SIDE}x{MAX_SIDE} pixels",
            loc=_loc(index),
            ctx={"max_width": MAX_SIDE, "max_height": MAX_SIDE},
            input=source,
        ) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImageFormat(
            "Could not identify the image format; use PNG, JPEG, WebP or GIF",
            loc=_loc(index),
            ctx=_formats_ctx(),
            input=source,
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"Could not load image: {exc}", loc=_loc(index), input=source) from exc
    return _normalise(image)


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
class FetchPolicy:
    """How reference images may be fetched.

    Args:
        allow: host names and networks that may be fetched even though they are private.
        allow_all: no address checks at all (the local CLI, tests).
        max_bytes, connect_timeout, read_timeout, max_redirects: limits per download.
    """

    allow: tuple[str, ...] = ()
    allow_all: bool = False
    max_bytes: int = MAX_DOWNLOAD_BYTES
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_redirects: int = 5
    _networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks, hosts = [], set()
        for entry in self.allow:
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        object.__setattr__(self, "_networks", tuple(networks))
        object.__setattr__(self, "_hosts", frozenset(hosts))

    @classmethod
    def from_text(cls, allow: str, **limits: Any) -> FetchPolicy:
        """From a comma-separated allow list (``FLUX2_FETCH_ALLOW``); ``*`` allows everything."""
        entries = tuple(e.strip() for e in allow.split(",") if e.strip())
        return cls(allow=tuple(e for e in entries if e != "*"), allow_all="*" in entries, **limits)

    def host_allowed(self, host: str) -> bool:
        return self.allow_all or host.lower().rstrip(".") in self._hosts

    def address_allowed(self, address: IPAddress) -> bool:
        if self.allow_all or any(address in network for network in self._networks):
            return True
        return not is_internal(address)


# IPv6 ranges that carry an IPv4 address a gateway may route to (RFC 6052, 8215, 4291).
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 transition address leads to: IPv4-mapped and -compatible,
    6to4 (``2002::/16``), Teredo (``2001::/32``: server and client) and NAT64 (``64:ff9b::/96``)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in NAT64_WELL_KNOWN or address in IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return tuple(found)


def is_internal(address: IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata), multicast, reserved or unspecified, or an
    IPv6 address that leads to one (site-local, NAT64 local-use, or an embedded IPv4 address).

    IPv4-mapped, 6to4 and well-known NAT64 addresses are judged by the IPv4 address they carry
    alone (``64:ff9b::808:808`` reaches 8.8.8.8 through a NAT64 gateway), so the answer does not
    depend on how this Python version classifies those IPv6 ranges.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local or address in NAT64_LOCAL_USE:
            return True
        carried = embedded_ipv4(address)
        if any(_flagged(ipv4) for ipv4 in carried):
            return True
        if carried and (
            address.ipv4_mapped is not None
            or address.sixtofour is not None
            or address in NAT64_WELL_KNOWN
        ):
            return False
    return _flagged(address)


def _flagged(address: IPAddress) -> bool:
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


class ForbiddenAddress(httpcore.ConnectError):
    """The host resolves only to addresses the policy refuses."""


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves the host itself and connects only to an address the policy allows."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        allowed = [
            a for a in addresses if self.policy.host_allowed(host) or self.policy.address_allowed(a)
        ]
        if not allowed:
            raise ForbiddenAddress(
                f"refused to fetch from {host} ({', '.join(sorted({str(a) for a in addresses}))}): "
                "internal addresses are not fetched unless the operator allows them "
                "(FLUX2_FETCH_ALLOW)"
            )
        failure: Exception | None = None
        for address in dict.fromkeys(allowed):  # each allowed address once, in resolver order
            try:
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        # httpx's transport takes no network backend; its pool does (same settings otherwise).
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=_GuardedBackend(policy),
        )


def download(
    url: str, *, index: int = 0, policy: FetchPolicy | None = None, timeout: float | None = None
) -> bytes:
    """GET ``url`` (http or https) within ``policy``'s limits and address rules."""
    policy = policy or FetchPolicy()
    timeouts = httpx.Timeout(
        timeout if timeout is not None else policy.read_timeout,
        connect=policy.connect_timeout,
    )
    try:
        with (
            httpx.Client(
                transport=_GuardedTransport(policy),
                timeout=timeouts,
                follow_redirects=True,
                max_redirects=policy.max_redirects,
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise FileDownloadError(
                    f"File download error: HTTP {response.status_code}", loc=_loc(index), input=url
                )
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise _too_big(url, index, policy)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise _too_big(url, index, policy)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TooManyRedirects as exc:
        raise FileDownloadError(
            f"File download error: more than {policy.max_redirects} redirects",
            loc=_loc(index),
            input=url,
        ) from exc
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # ValueError: bad IDNA host
        reason = str(exc) or type(exc).__name__
        raise FileDownloadError(
            f"File download error: {reason}", loc=_loc(index), input=url
        ) from exc


def _too_big(url: str, index: int, policy: FetchPolicy) -> FileDownloadError:
    return FileDownloadError(
        f"File download error: larger than {policy.max_bytes} bytes",
        loc=_loc(index),
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
