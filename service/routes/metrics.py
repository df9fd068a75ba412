"""``GET /metrics``: this process's metrics in the Prometheus text format.

Public, like ``/health``: it holds counts and timings, no request content. Restrict it at the
network (or the reverse proxy) where that matters.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.openapi import METRICS_RESPONSES

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics (text format)",
    response_class=Response,
    responses=METRICS_RESPONSES,
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.flux2.metrics
    body = await run_in_threadpool(registry.render)  # the queue depth may ask Redis
    return Response(body, media_type=CONTENT_TYPE_LATEST)
