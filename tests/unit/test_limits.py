"""The request body limit (service/limits.py): declared and streamed sizes, fal-style 413."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Message

from service.limits import BodyLimitMiddleware

LIMIT = 1024


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body)})


async def ignore_body(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def make_app(limit: int = LIMIT) -> BodyLimitMiddleware:
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/ignore", ignore_body, methods=["POST", "GET"]),
        ]
    )
    return BodyLimitMiddleware(app, max_bytes=limit)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


def _assert_413(response: Any) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-fal-error-type"] == "request_too_large"
    body = response.json()
    assert body == {
        "detail": f"Request body is larger than {LIMIT} bytes",
        "error_type": "request_too_large",
    }


def _chunks(total: int, size: int = 100) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


@pytest.mark.parametrize("size", [0, 1, LIMIT - 1, LIMIT])
def test_declared_body_under_or_at_the_limit_passes(client: TestClient, size: int) -> None:
    response = client.post("/echo", content=b"x" * size)
    assert response.status_code == 200
    assert response.json() == {"received": size}


@pytest.mark.parametrize("size", [LIMIT + 1, 10 * LIMIT])
def test_declared_body_over_the_limit_is_413(client: TestClient, size: int) -> None:
    _assert_413(client.post("/echo", content=b"x" * size))


def test_declared_length_is_refused_before_the_app_runs(client: TestClient) -> None:
    # /ignore never reads the body: only the Content-Length header can refuse it.
    _assert_413(client.post("/ignore", content=b"x" * (LIMIT + 1)))


@pytest.mark.parametrize("size", [1, LIMIT])
def test_chunked_body_under_the_limit_passes(client: TestClient, size: int) -> None:
    response = client.post("/echo", content=_chunks(size))
    assert response.status_code == 200
    assert response.json() == {"received": size}


@pytest.mark.parametrize("size", [LIMIT + 1, 5 * LIMIT])
def test_chunked_body_over_the_limit_is_413(client: TestClient, size: int) -> None:
    request = client.build_request("POST", "/echo", content=_chunks(size))
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    _assert_413(client.send(request))


def test_get_without_body_passes(client: TestClient) -> None:
    assert client.get("/ignore").json() == {"ok": True}


# -- the raw ASGI contract: streamed messages, a lying Content-Length --------------------------


def _call(app: BodyLimitMiddleware, headers: list[tuple[bytes, bytes]], parts: list[bytes]):
    """Send ``parts`` as separate http.request messages; return (status, body, messages read)."""
    pending: list[Message] = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    read: list[Message] = []
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            message = pending.pop(0)
            read.append(message)
            return message
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, read


def test_streamed_messages_over_the_limit_stop_reading() -> None:
    status, body, read = _call(make_app(), [], [b"x" * 600] * 10)
    assert status == 413
    assert json.loads(body)["error_type"] == "request_too_large"
    assert len(read) == 2  # refused at the message that crossed the limit, not at the end


def test_streamed_messages_under_the_limit_pass() -> None:
    status, body, _ = _call(make_app(), [], [b"x" * 300] * 3)
    assert status == 200
    assert json.loads(body) == {"received": 900}


def test_understated_content_length_does_not_bypass_the_limit() -> None:
    status, _, _ = _call(make_app(), [(b"content-length", b"10")], [b"x" * 600] * 4)
    assert status == 413


def test_non_numeric_content_length_falls_back_to_counting() -> None:
    status, _, _ = _call(make_app(), [(b"content-length", b"lots")], [b"x" * 600] * 4)
    assert status == 413


def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = BodyLimitMiddleware(inner, max_bytes=1)

    async def nothing() -> Message:
        return {"type": "lifespan.startup"}

    async def sink(message: Message) -> None:
        return None

    asyncio.run(middleware({"type": "lifespan"}, nothing, sink))
    assert seen == ["lifespan"]
