"""fal's sync run: ``POST /fal-ai/flux-2/flash/edit`` answers with the output (fal-protocol §8).

The job goes through the same queue as submitted ones (so batching and progress work alike); the
route waits for its completion on the queue's change feed (no polling), and a client that
disconnects cancels it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.endpoints import DEFAULT_ENDPOINT
from service.jobs import JobStatus
from service.schema import INPUT_BODY_SCHEMA
from service.submission import (
    body_errors,
    new_job,
    outcome_response,
    read_json_body,
    require_key,
)

router = APIRouter(tags=["run"], dependencies=[Depends(require_key)])
#: How often, while the job has not changed, the route looks whether the client is still there
#: (a local check: the job itself is read only when it changes).
DISCONNECT_CHECK_SECONDS = 0.5


@router.post(
    f"/{DEFAULT_ENDPOINT.id}",
    operation_id="run",
    summary="Edit images and wait for the result",
    openapi_extra=INPUT_BODY_SCHEMA,
    responses={200: {"model": DEFAULT_ENDPOINT.output_model}},
)
async def run(request: Request) -> JSONResponse:
    # The body is validated by hand, after the API key (a typed parameter would come first).
    state = request.app.state.flux2
    job, errors = new_job(request, state.settings, await read_json_body(request))
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
