"""Liveness and readiness.

``/health`` answers as long as the HTTP server runs. ``/ready`` says whether a request sent now
would be served: the queue must be reachable, and a worker must be ready — the embedded one
(``serve``), or, for an API node, any live worker sharing its Redis (workers announce their
state every few seconds; see :meth:`service.queue.base.JobQueue.announce`).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.errors import QueueUnavailable
from service.jobs import WorkerInfo
from service.openapi import READY_RESPONSES
from service.status import WorkerState

router = APIRouter(tags=["health"])


@router.get("/health", operation_id="health", summary="Liveness: the HTTP server answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    operation_id="ready",
    summary="Readiness, with the workers' state",
    responses=READY_RESPONSES,
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state.flux2
    try:
        workers = await state.jobs.live_workers()
    except QueueUnavailable as exc:
        return _not_ready(f"the queue is unreachable: {exc.message}", worker=_embedded(state))
    worker = state.worker
    if worker is not None:  # serve: the worker in this process decides
        ok = worker.state.serving
        body: dict[str, Any] = {"status": "ready" if ok else "not_ready", "worker": worker.state}
        if worker.error:
            body["error"] = worker.error
        return JSONResponse(body, status_code=200 if ok else 503)
    listed = [_describe(info) for info in workers]
    if not any(WorkerState(info.state).serving for info in workers if _known(info.state)):
        reason = "no live worker" if not workers else "no worker is ready yet"
        return _not_ready(reason, worker=None, workers=listed)
    return JSONResponse({"status": "ready", "worker": None, "workers": listed})


def _not_ready(reason: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"status": "not_ready", "reason": reason, **fields}, status_code=503)


def _embedded(state: Any) -> str | None:
    return None if state.worker is None else str(state.worker.state)


def _known(value: str) -> bool:
    return value in WorkerState._value2member_map_


def _describe(info: WorkerInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "state": info.state,
        "model": info.model,
        "seen_seconds_ago": round(max(0.0, time.time() - info.seen_at), 1),
    }
