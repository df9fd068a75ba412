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

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Flux2Error, QueueFull, QueueUnavailable, Unauthorized
from service.auth import ApiKeys
from service.endpoints import Endpoint
from service.fal_errors import error_body, pydantic_problems
from service.job_access import AsyncJobs
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics
from service.middleware import MetricsMiddleware, RequestIdMiddleware, UnexpectedErrorMiddleware
from service.openapi import complete
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
from service.settings import Settings
from service.status import WorkerHandle
from service.storage.base import ArtifactStore
from service.submission import require_key
from service.uploads import Uploads, UploadSigner
from service.webhooks import WebhookSender

logger = logging.getLogger(__name__)

#: The routers every server has; the run and queue routes are made per endpoint.
ROUTERS = (
    files_routes.router,
    health_routes.router,
    metrics_routes.router,
    playground_routes.router,
    storage_routes.router,
    openai_routes.router,
)


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
        summary="FLUX.2 [dev] image generation and editing with fal's fal-ai/flux-2 APIs",
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
    endpoints = settings.serving.enabled()
    routers = (
        run_routes.router_for(endpoints),
        queue_routes.router_for(endpoints),
        *ROUTERS,
    )
    for router in routers:
        app.include_router(router)
    _add_error_handlers(app)
    _complete_openapi(app, routers, endpoints)
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


def _complete_openapi(
    app: FastAPI, routers: tuple[APIRouter, ...], endpoints: tuple[Endpoint, ...]
) -> None:
    """/openapi.json says everything each route answers (:mod:`service.openapi`): the inputs
    and outputs of ``endpoints`` (routes validate inputs by hand, after the key), error bodies,
    401 with keys, headers."""
    build = app.openapi
    state: AppState = app.state.flux2
    protected = (
        {
            route.operation_id
            for router in routers
            if any(depends.dependency is require_key for depends in router.dependencies)
            for route in router.routes
            if isinstance(route, APIRoute) and route.operation_id
        }
        | storage_routes.KEYED
        | openai_routes.KEYED
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                build(), protected=protected, api_keys=state.keys.enabled, endpoints=endpoints
            )
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
        content: dict[str, Any] = {"detail": detail}
        if request.url.path.startswith("/v1/"):  # no route matched there: still OpenAI's shape
            kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
            error = {"message": str(detail), "type": kind, "param": None, "code": None}
            content = {"error": error}
        return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)
