"""The SSRF guard: outgoing HTTP (image downloads, webhooks) only to addresses a policy allows.

By default only public addresses are contacted: loopback, private, link-local (cloud metadata at
169.254.169.254 included), multicast, reserved, unspecified and site-local addresses are refused,
and so are IPv6 transition addresses that lead to one of them (IPv4-mapped and -compatible, 6to4,
Teredo, NAT64). The check happens in the connection itself, on the address actually connected to,
for the first request and for every redirect, so DNS rebinding cannot slip past it. Operators
allow on-prem hosts with :class:`AddressPolicy` ``allow`` entries: host names or networks
(``images.internal``, ``10.20.0.0/16``).

:func:`guarded_client` is the one way to build an HTTP client that honours a policy;
:func:`webhook_policy` is the policy of webhooks (``FLUX2_WEBHOOK_ALLOW``), and
:func:`check_webhook_url` checks a ``fal_webhook`` at submit, before anything is sent.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self

import httpcore2
import httpx2

from core.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 ranges that carry an IPv4 address a gateway may route to (RFC 6052, 8215, 4291).
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses outgoing connections may reach.

    Args:
        allow: host names and networks that may be contacted even though they are internal.
        allow_all: no address checks at all (the local CLI, tests).
        setting: the setting that fills ``allow``, named in refusals so operators know what to set.
        verb: what is refused, for the message ("fetch from", "send webhooks to").
    """

    allow: tuple[str, ...] = ()
    allow_all: bool = False
    setting: str = field(default="FLUX2_FETCH_ALLOW", compare=False)
    verb: str = field(default="fetch from", compare=False)
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
    def from_text(cls, allow: str, **options: Any) -> Self:
        """From a comma-separated allow list (``FLUX2_FETCH_ALLOW``); ``*`` allows everything."""
        entries = tuple(e.strip() for e in allow.split(",") if e.strip())
        return cls(allow=tuple(e for e in entries if e != "*"), allow_all="*" in entries, **options)

    def host_allowed(self, host: str) -> bool:
        return self.allow_all or host.lower().rstrip(".") in self._hosts

    def address_allowed(self, address: IPAddress) -> bool:
        if self.allow_all or any(address in network for network in self._networks):
            return True
        return not is_internal(address)


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


class ForbiddenAddress(httpcore2.ConnectError):
    """The host resolves only to addresses the policy refuses."""


def refused_by_guard(error: BaseException) -> bool:
    """Whether an httpx2 error (or what it wraps) is the guard refusing an address."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ForbiddenAddress):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _GuardedBackend(httpcore2.NetworkBackend):
    """Resolves the host itself and connects only to an address the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore2.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        allowed = [
            a for a in addresses if self.policy.host_allowed(host) or self.policy.address_allowed(a)
        ]
        if not allowed:
            raise ForbiddenAddress(
                f"refused to {self.policy.verb} {host} "
                f"({', '.join(sorted({str(a) for a in addresses}))}): internal addresses are "
                f"refused unless the operator allows them ({self.policy.setting})"
            )
        failure: Exception | None = None
        for address in dict.fromkeys(allowed):  # each allowed address once, in resolver order
            try:
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        raise httpcore2.ConnectError("unix sockets are not contacted")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx2.HTTPTransport):
    """httpx2's own transport, with the guard as the network backend of its connection pool.

    httpx2 has no option for a network backend, so this replaces the pool its constructor builds,
    which it keeps in the private attribute ``_pool``, with an equal one on the guard. If a new
    httpx2 release stops sending requests through ``_pool`` the guard would be bypassed silently:
    the constructor refuses to build without the attribute, and ``tests/unit/test_guard.py``
    checks that a request really goes through the replaced pool.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        ssl_context = httpx2.create_ssl_context()  # the system store; SSL_CERT_FILE if set
        super().__init__(verify=ssl_context)
        if not isinstance(getattr(self, "_pool", None), httpcore2.ConnectionPool):
            raise RuntimeError(
                "httpx2.HTTPTransport no longer keeps its connection pool in '_pool': the SSRF "
                "guard cannot be installed (see service/guard.py)"
            )
        self._pool = httpcore2.ConnectionPool(
            ssl_context=ssl_context, network_backend=_GuardedBackend(policy)
        )


def guarded_client(
    policy: AddressPolicy,
    *,
    timeout: httpx2.Timeout,
    follow_redirects: bool = False,
    max_redirects: int = 5,
) -> httpx2.Client:
    """An httpx2 client that connects only where ``policy`` allows (redirects included).

    ``trust_env`` is off: no proxy from the environment (a proxy would be the address checked)
    and no ``.netrc`` credentials sent to whatever host a request names.
    """
    return httpx2.Client(
        transport=GuardedTransport(policy),
        timeout=timeout,
        follow_redirects=follow_redirects,
        max_redirects=max_redirects,
        trust_env=False,
    )


# -- webhooks ------------------------------------------------------------------------------------


MAX_URL_LENGTH = 2083  # what pydantic's HttpUrl (and most browsers) accept
WEBHOOK_LOC = ("query", "fal_webhook")


def webhook_policy(allow: str = "") -> AddressPolicy:
    """The receivers webhooks may go to: public addresses, plus ``allow`` (``FLUX2_WEBHOOK_ALLOW``
    syntax: host names and networks, comma-separated; ``*`` = anywhere)."""
    return AddressPolicy.from_text(allow, setting="FLUX2_WEBHOOK_ALLOW", verb="send webhooks to")


def check_webhook_url(url: str | None) -> str | None:
    """``url`` if it is an absolute http(s) URL with a host; otherwise fal's 422 at
    ``["query", "fal_webhook"]``. Where it points is checked when it is delivered."""
    if url is None:
        return None
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(
            f"fal_webhook is longer than {MAX_URL_LENGTH} characters",
            loc=WEBHOOK_LOC,
            type="url_too_long",
            ctx={"max_length": MAX_URL_LENGTH},
            input=url[:64],
        )
    try:
        parsed = httpx2.URL(url)
    except (httpx2.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidRequest(
            f"fal_webhook is not a valid URL: {exc}", loc=WEBHOOK_LOC, type="url_parsing", input=url
        ) from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidRequest(
            "fal_webhook must be an http or https URL",
            loc=WEBHOOK_LOC,
            type="url_scheme",
            ctx={"expected_schemes": "'http' or 'https'"},
            input=url,
        )
    if not parsed.host:
        raise InvalidRequest(
            "fal_webhook is not a valid URL: it has no host",
            loc=WEBHOOK_LOC,
            type="url_parsing",
            input=url,
        )
    return url
