"""The SSRF guard (service/guard.py): its hold on httpx2's transport, policies and refusals.

The address rules themselves (``is_internal``) are tabled in test_inputs.py, next to the image
downloads that use them; the spellings of internal hosts run through the whole service in
tests/security.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore2
import httpx2
import pytest

from service.guard import AddressPolicy, GuardedTransport, guarded_client, refused_by_guard

TIMEOUT = httpx2.Timeout(5.0)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None


class _Server(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}/x"


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# -- the private attribute the guard relies on -------------------------------------------------


def test_httpx2_keeps_its_connection_pool_in_the_private_pool_attribute() -> None:
    """GuardedTransport replaces ``HTTPTransport._pool``. If this fails, httpx2 changed how its
    transport holds its pool: rework GuardedTransport before upgrading httpx2."""
    transport = httpx2.HTTPTransport()
    assert isinstance(transport._pool, httpcore2.ConnectionPool)
    transport.close()


def test_requests_really_go_through_the_replaced_pool(server: _Server) -> None:
    """The loud check: were httpx2 to send requests through anything but ``_pool``, this request
    would reach the loopback server instead of being refused by the guard."""
    with (
        httpx2.Client(transport=GuardedTransport(AddressPolicy()), timeout=TIMEOUT) as client,
        pytest.raises(httpx2.ConnectError, match="refused to fetch from 127.0.0.1") as exc_info,
    ):
        client.get(server.url)
    assert refused_by_guard(exc_info.value)
    assert server.hits == []


def test_guarded_transport_refuses_to_build_without_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def init_without_pool(self: httpx2.HTTPTransport, **kwargs: Any) -> None:
        return None  # as if a release renamed the attribute

    monkeypatch.setattr(httpx2.HTTPTransport, "__init__", init_without_pool)
    with pytest.raises(RuntimeError, match="_pool"):
        GuardedTransport(AddressPolicy())


# -- policies and clients ------------------------------------------------------------------------


def test_allowed_address_is_contacted(server: _Server) -> None:
    with guarded_client(AddressPolicy.from_text("127.0.0.1"), timeout=TIMEOUT) as client:
        assert client.get(server.url).text == "ok"
    assert server.hits == ["/x"]


def test_refusal_names_the_setting_to_change(server: _Server) -> None:
    policy = AddressPolicy(setting="FLUX2_WEBHOOK_ALLOW", verb="send webhooks to")
    with (
        guarded_client(policy, timeout=TIMEOUT) as client,
        pytest.raises(httpx2.ConnectError) as exc_info,
    ):
        client.get(server.url)
    message = str(exc_info.value)
    assert message.startswith("refused to send webhooks to 127.0.0.1 (127.0.0.1)")
    assert "FLUX2_WEBHOOK_ALLOW" in message
    assert server.hits == []


def test_a_plain_connection_error_is_not_a_refusal() -> None:
    error = httpx2.ConnectError("connection refused")
    error.__cause__ = httpcore2.ConnectError("connection refused")
    assert not refused_by_guard(error)


def test_proxies_from_the_environment_are_not_used(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would be the only address the guard sees; the guarded client never takes one."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with guarded_client(AddressPolicy.from_text("127.0.0.1"), timeout=TIMEOUT) as client:
        assert client.get(server.url).text == "ok"
    assert server.hits == ["/x"]


def test_policy_text() -> None:
    policy = AddressPolicy.from_text(" hooks.internal. , 10.20.0.0/16,", setting="X")
    assert policy.host_allowed("HOOKS.internal")
    assert not policy.host_allowed("other.internal")
    assert policy.setting == "X"
    assert AddressPolicy.from_text("*").allow_all
    assert AddressPolicy.from_text("") == AddressPolicy()
