"""fal's sync run: ``POST /{endpoint id}`` answers with the output (fal-protocol §8).

One route per enabled endpoint of the registry (:mod:`service.endpoints`). The job goes through
the same queue as submitted ones (so batching and progress work alike); the route waits for its
completion on the queue's change feed (no polling), and a client that disconnects cancels it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.endpoints import Endpoint
from service.jobs import JobStatus
from service.openapi import run_extra, run_responses
from service.submission import (
    body_errors,
    new_job,
    outcome_response,
    read_json_body,
    require_key,
)

#: How often, while the job has not changed, the route looks whether the client is still there
#: (a local check: the job itself is read only when it changes).
DISCONNECT_CHECK_SECONDS = 0.5


def operation_id(kind: str, endpoint: Endpoint) -> str:
    """``run``/``submit`` for the flash edit (the first endpoint, whose ids clients know), and
    ``run_flux_2_lora`` style ids for the others."""
    if endpoint.id == "fal-ai/flux-2/flash/edit":
        return kind
    return f"{kind}_{endpoint.slug.replace('-', '_')}"


def router_for(endpoints: Iterable[Endpoint]) -> APIRouter:
    """The sync-run routes of ``endpoints``."""
    router = APIRouter(tags=["run"], dependencies=[Depends(require_key)])
    for endpoint in endpoints:
        router.add_api_route(
            f"/{endpoint.id}",
            _runner(endpoint),
            methods=["POST"],
            operation_id=operation_id("run", endpoint),
            summary=f"{endpoint.summary}; waits for the result",
            openapi_extra=run_extra(endpoint),
            responses=run_responses(endpoint),
        )
    return router


def _runner(endpoint: Endpoint) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def run(request: Request) -> JSONResponse:
        return await run_endpoint(request, endpoint)

    return run


async def run_endpoint(request: Request, endpoint: Endpoint) -> JSONResponse:
    # The body is validated by hand, after the API key (a typed parameter would come first).
    state = request.app.state.flux2
    job, errors = new_job(request, state.settings, await read_json_body(request), endpoint)
    if errors:
        raise body_errors(errors)
    job.webhook_url = None  # sync runs answer on the connection
    await state.jobs.submit(job)
    async with state.jobs.watching(job.id) as watch:
        view = None
        while True:
            view = await watch.next(view, timeout=DISCONNECT_CHECK_SECONDS)
            if view is None:  # expired while we waited: cannot happen with a sane TTL
                return JSONResponse({"detail": "Result expired"}, status_code=500)
            if view.status is JobStatus.COMPLETED and view.outcome is not None:
                return outcome_response(view.outcome, job.id)
            if await request.is_disconnected():
                await state.jobs.cancel(job.id)
                return JSONResponse({"detail": "Client disconnected"}, status_code=499)
