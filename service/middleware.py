"""The app's ASGI middleware: request ids, one 500 for unexpected errors, metrics and access logs.

Order (outermost first, as :func:`service.app.create_app` adds them): the fal proxy contract,
``RequestIdMiddleware``, ``MetricsMiddleware``, the body limit, CORS, then
``UnexpectedErrorMiddleware`` innermost, so that its 500 still carries CORS headers and the id.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import adopt_request_id, request_context
from service.metrics import Metrics

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("service.access")

OTHER_ROUTE = "other"  # requests that matched no route (bounded label values)
QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})  # probes: access lines at DEBUG


class UnexpectedErrorMiddleware:
    """Any unhandled exception becomes fal's 500, logged once with its traceback.

    Starlette answers ``exception_handler(Exception)`` from its outermost middleware, past CORS
    and the request id; catching it here, inside them, keeps both on the error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            message = "Internal Server Error"
            content: dict[str, Any] = {"detail": message, "error_type": "internal_error"}
            if str(scope.get("path", "")).startswith("/v1/"):  # the OpenAI routes: OpenAI's shape
                error = {"message": message, "type": "server_error", "param": None,
                         "code": "internal_error"}  # fmt: skip
                content = {"error": error}
            response = JSONResponse(
                status_code=500, content=content, headers={"X-Fal-Error-Type": "internal_error"}
            )
            await response(scope, receive, send)


class RequestIdMiddleware:
    """Every response carries ``x-fal-request-id`` (PY retries 5xx that lack it).

    Log records made during the request carry the same id (the job's, once a route names it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = str(uuid.uuid4())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                given = next((v for k, v in headers if k.lower() == b"x-fal-request-id"), None)
                if given is None:
                    headers.append((b"x-fal-request-id", request_id.encode()))
                else:
                    adopt_request_id(given.decode("latin-1"))
                message = {**message, "headers": headers}
            await send(message)

        with request_context(request_id):
            await self.app(scope, receive, send_with_id)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template, and logs one access line (at
    DEBUG for successful probes and scrapes, so they do not drown the rest).

    Register it inside ``RequestIdMiddleware`` (so the line carries the request id) and inside
    any middleware that copies the scope (so the router's ``scope["route"]`` is visible here).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before responding

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.perf_counter() - started
            route = _route_template(scope)
            method = str(scope.get("method", ""))
            self.metrics.observe_request(route, method, status, seconds)
            quiet = route in QUIET_ROUTES and status < 400
            access_logger.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %d %.1f ms",
                method,
                scope.get("path", ""),
                status,
                seconds * 1000,
                extra={"route": route, "status": status, "duration_ms": round(seconds * 1000, 1)},
            )


def _route_template(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else OTHER_ROUTE
