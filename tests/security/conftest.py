"""Fixtures of the security tests: hostile file servers on loopback addresses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security_helpers import PNG, HttpServer, Servers, hostile_routes, send


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """127.0.0.1 serves a valid PNG (so a guard failure would succeed); 127.0.0.2 is hostile."""
    private = HttpServer("127.0.0.1")
    private.routes["/ok.png"] = lambda h: send(h, 200, PNG, Content_Type="image/png")
    allowed = HttpServer("127.0.0.2", hostile_routes(private.base))
    try:
        yield Servers(private=private, allowed=allowed)
    finally:
        allowed.stop()
        private.stop()
