"""fal's sync run: ``POST /fal-ai/flux-2/flash/edit`` answers with the output (fal-protocol §8).

The job goes through the same queue as submitted ones (so batching and progress work alike); a
client that disconnects cancels it.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from service.jobs import JobStatus
from service.schema import ENDPOINT_ID, INPUT_BODY_SCHEMA, Flux2FlashEditOutput
from service.submission import (
    body_errors,
    new_job,
    outcome_response,
    read_json_body,
    require_key,
)

router = APIRouter(tags=["run"], dependencies=[Depends(require_key)])
POLL_SECONDS = 0.02


@router.post(
    f"/{ENDPOINT_ID}",
    operation_id="run",
    summary="Edit images and wait for the result",
    openapi_extra=INPUT_BODY_SCHEMA,
    responses={200: {"model": Flux2FlashEditOutput}},
)
async def run(request: Request) -> JSONResponse:
    # The body is validated by hand, after the API key (a typed parameter would come first).
    state = request.app.state.flux2
    job, errors = new_job(request, state.settings, await read_json_body(request))
    if errors:
        raise body_errors(errors)
    job.webhook_url = None  # sync runs answer on the connection
    state.queue.submit(job)
    polls = 0
    while True:
        view = state.queue.view(job.id)
        if view is None:  # expired while we waited: cannot happen with a sane TTL
            return JSONResponse({"detail": "Result expired"}, status_code=500)
        if view.status is JobStatus.COMPLETED and view.outcome is not None:
            return outcome_response(view.outcome, job.id)
        polls += 1
        if polls % 25 == 0 and await request.is_disconnected():
            state.queue.cancel(job.id)
            return JSONResponse({"detail": "Client disconnected"}, status_code=499)
        await asyncio.sleep(POLL_SECONDS)
