"""The FastAPI app factory: routes, fal-shaped errors, and the embedded worker's lifecycle.

``create_app(settings, queue=..., store=..., worker=...)`` wires the seams together
(:func:`service.bootstrap.build_app` calls it for every command); ``serve`` passes an embedded
worker (the engine in this process), ``api`` passes none. The HTTP layer never imports torch or
the worker's modules: it talks to the worker only through the queue and the store (off the event
loop, :class:`~service.job_access.AsyncJobs`), and knows of an embedded worker only its
:class:`~service.status.WorkerHandle`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Flux2Error, QueueFull, QueueUnavailable, Unauthorized
from service.auth import ApiKeys
from service.fal_errors import error_body, pydantic_problems
from service.job_access import AsyncJobs
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics
from service.middleware import MetricsMiddleware, RequestIdMiddleware, UnexpectedErrorMiddleware
from service.proxy import FalProxyMiddleware
from service.queue.base import JobQueue
from service.routes import files as files_routes
from service.routes import health as health_routes
from service.routes import metrics as metrics_routes
from service.routes import openai as openai_routes
from service.routes import playground as playground_routes
from service.routes import queue as queue_routes
from service.routes import run as run_routes
from service.routes import storage as storage_routes
from service.schema import openapi_components
from service.settings import Settings
from service.status import WorkerHandle
from service.storage.base import ArtifactStore
from service.uploads import Uploads, UploadSigner
from service.webhooks import WebhookSender

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    """What the routes read from ``request.app.state.flux2``."""

    settings: Settings
    jobs: AsyncJobs
    worker: WorkerHandle | None
    webhooks: WebhookSender | None
    keys: ApiKeys
    metrics: Metrics
    uploads: Uploads
    upload_signer: UploadSigner


def create_app(
    settings: Settings,
    *,
    queue: JobQueue,
    store: ArtifactStore,
    worker: WorkerHandle | None = None,
    webhooks: WebhookSender | None = None,
    metrics: Metrics | None = None,
    uploads: ArtifactStore | None = None,
) -> FastAPI:
    """The HTTP app. ``worker`` (if any) is started and stopped with the app.

    ``uploads`` is the store of files clients upload (the bootstrap's; None: the output store).

    ``metrics`` (made here when None) is served at ``/metrics``; give an embedded worker the
    same one (the bootstrap does) so its job metrics appear there too.
    """
    metrics = metrics if metrics is not None else Metrics()
    metrics.bind(queue=queue, worker=worker)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            app.state.flux2.jobs.close()
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
        jobs=AsyncJobs(queue, store),
        worker=worker,
        webhooks=webhooks,
        keys=ApiKeys(settings.http.api_keys),
        metrics=metrics,
        uploads=Uploads(
            uploads if uploads is not None else store,
            max_bytes=settings.storage.upload_max_bytes,
        ),
        upload_signer=UploadSigner.from_setting(
            secret.get_secret_value() if (secret := settings.storage.upload_secret) else None
        ),
    )
    app.include_router(run_routes.router)
    app.include_router(queue_routes.router)
    app.include_router(files_routes.router)
    app.include_router(health_routes.router)
    app.include_router(metrics_routes.router)
    app.include_router(playground_routes.router)
    app.include_router(storage_routes.router)
    app.include_router(openai_routes.router)
    _add_error_handlers(app)
    _add_input_schema(app)
    app.add_middleware(UnexpectedErrorMiddleware)  # innermost: its 500 still gets CORS and ids
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[o.strip() for o in settings.http.cors_origins.split(",") if o.strip()],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type"],
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.http.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # inside the request id, sees routes
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(FalProxyMiddleware)
    return app


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
        if isinstance(exc, QueueFull | QueueUnavailable):
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
