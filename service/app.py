"""The FastAPI app factory: routes, fal-shaped errors, and the embedded worker's lifecycle.

``create_app(settings, queue=..., store=..., worker=...)`` wires the seams together; the CLI's
``serve`` passes an embedded worker (the engine in this process), ``api`` passes none. The HTTP
layer never imports torch: it talks to the worker only through the queue and the store.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import Flux2Error, QueueFull, Unauthorized
from service.auth import ApiKeys
from service.fal_errors import error_body, pydantic_problems
from service.limits import BodyLimitMiddleware
from service.logs import adopt_request_id, request_context
from service.metrics import Metrics, MetricsMiddleware
from service.proxy import FalProxyMiddleware
from service.queue.base import JobQueue
from service.routes import files as files_routes
from service.routes import health as health_routes
from service.routes import metrics as metrics_routes
from service.routes import playground as playground_routes
from service.routes import queue as queue_routes
from service.routes import run as run_routes
from service.schema import openapi_components
from service.settings import Settings
from service.storage.base import ArtifactStore
from service.webhooks import WebhookSender
from service.worker import Worker

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    queue: JobQueue
    store: ArtifactStore
    worker: Worker | None
    webhooks: WebhookSender | None
    keys: ApiKeys
    metrics: Metrics | None = None


def create_app(
    settings: Settings,
    *,
    queue: JobQueue,
    store: ArtifactStore,
    worker: Worker | None = None,
    webhooks: WebhookSender | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The HTTP app. ``worker`` (if any) is started and stopped with the app.

    ``metrics`` (made here when None) is served at ``/metrics`` and also given to a ``worker``
    that has none, so an embedded worker's job metrics appear there too.
    """
    metrics = metrics if metrics is not None else Metrics()
    metrics.bind(queue=queue, worker=worker)
    if worker is not None and worker.metrics is None:
        worker.metrics = metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            queue.close()
            if webhooks is not None:
                webhooks.close()

    app = FastAPI(
        title="flux2-edit",
        summary="FLUX.2 [dev] image editing with fal's fal-ai/flux-2/flash/edit API",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.flux2 = AppState(
        settings=settings,
        queue=queue,
        store=store,
        worker=worker,
        webhooks=webhooks,
        keys=ApiKeys(settings.api_keys),
        metrics=metrics,
    )
    app.include_router(run_routes.router)
    app.include_router(queue_routes.router)
    app.include_router(files_routes.router)
    app.include_router(health_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(playground_routes.router)
    _add_error_handlers(app)
    _add_input_schema(app)
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost: its 500 still gets CORS and ids
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type"],
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # inside the request id, sees routes
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(FalProxyMiddleware)
    return app


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
            response = JSONResponse(
                status_code=500,
                content={"detail": "Internal Server Error", "error_type": "internal_error"},
                headers={"X-Fal-Error-Type": "internal_error"},
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


def _add_input_schema(app: FastAPI) -> None:
    """Put the input model in /openapi.json (routes validate it by hand, after auth)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                openapi_components()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": pydantic_problems(list(exc.errors()))},
            headers={"x-fal-billable-units": "0"},
        )

    @app.exception_handler(Flux2Error)
    async def on_flux2_error(request: Request, exc: Flux2Error) -> JSONResponse:
        headers = {"X-Fal-Error-Type": exc.code}
        if isinstance(exc, QueueFull):
            headers["Retry-After"] = "5"
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Key"
        return JSONResponse(status_code=exc.http_status, content=error_body(exc), headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"Path {request.url.path} not found"
        return JSONResponse(
            status_code=exc.status_code, content={"detail": detail}, headers=exc.headers
        )
