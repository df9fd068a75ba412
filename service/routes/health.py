"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.openapi import READY_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/health", operation_id="health", summary="Liveness: the HTTP server answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    operation_id="ready",
    summary="Readiness, with the worker's state",
    responses=READY_RESPONSES,
)
async def ready(request: Request) -> JSONResponse:
    worker = request.app.state.flux2.worker
    if worker is None:  # an API node: the workers are elsewhere
        return JSONResponse({"status": "ready", "worker": None})
    ok = worker.state.serving
    body = {"status": "ready" if ok else "not_ready", "worker": worker.state.value}
    if worker.error:
        body["error"] = worker.error
    return JSONResponse(body, status_code=200 if ok else 503)
