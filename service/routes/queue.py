"""fal's queue protocol: submit, status, status stream, result, cancel.

See docs/reference/fal-protocol.md §3-5.

Submit uses the full endpoint id (one route per enabled endpoint of :mod:`service.endpoints`);
status, result and cancel are served both under the app-only form
``/queue/fal-ai/flux-2/requests/{id}…`` and the sub-path form of every enabled endpoint
(``/queue/fal-ai/flux-2/flash/edit/requests/{id}…``). Requests are found by id whatever the form.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from service.endpoints import Endpoint
from service.jobs import CancelOutcome, JobStatus, JobView
from service.openapi import (
    CANCEL_RESPONSES,
    STATUS_RESPONSES,
    STATUS_STREAM_RESPONSES,
    SUBMIT_RESPONSES,
    result_responses,
    submit_extra,
)
from service.outcomes import invalid_input
from service.routes.run import operation_id
from service.schema import Flux2Output
from service.submission import (
    JobUrls,
    base_url,
    logs_wanted,
    new_job,
    outcome_response,
    read_json_body,
    request_id_header,
    require_key,
    status_body,
    visible_view,
)

#: A status stream with no news sends a comment line this often (keeps proxies from closing it).
STREAM_PING_SECONDS = 15.0


def _state(request: Request) -> Any:
    return request.app.state.flux2


def _submitter(endpoint: Endpoint) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def submit(request: Request) -> JSONResponse:
        return await submit_endpoint(request, endpoint)

    return submit


async def submit_endpoint(request: Request, endpoint: Endpoint) -> JSONResponse:
    state = _state(request)
    job, errors = new_job(request, state.settings, await read_json_body(request), endpoint)
    if errors:
        outcome = invalid_input(errors)
        await state.jobs.finish_now(job, outcome)
        if job.webhook_url and state.webhooks is not None:
            state.webhooks.send(job.webhook_url, job.id, outcome)
    else:
        await state.jobs.submit(job)
    view = await state.jobs.view(job.id)
    urls = JobUrls.of(job.base_url, job.id)
    body = {
        "status": view.status.value if view else JobStatus.COMPLETED.value,
        "request_id": job.id,
        "gateway_request_id": job.id,
        "response_url": urls.response_url,
        "status_url": urls.status_url,
        "cancel_url": urls.cancel_url,
        "queue_position": (view.queue_position or 0) if view else 0,
    }
    return JSONResponse(body, headers={"x-fal-request-id": job.id})


def _not_found(request_id: str) -> JSONResponse:
    return JSONResponse(
        {"status": "NOT_FOUND", "detail": f"Request {request_id} not found"},
        status_code=404,
        headers={**request_id_header(request_id), "x-fal-billable-units": "0"},
    )


async def status(request: Request, request_id: str, logs: str | None = None) -> JSONResponse:
    state = _state(request)
    view = await visible_view(request, request_id)
    if view is None:
        return _not_found(request_id)
    body = status_body(view, base_url(request, state.settings), with_logs=logs_wanted(logs))
    code = 200 if view.status is JobStatus.COMPLETED else 202
    return JSONResponse(body, status_code=code, headers={"x-fal-request-id": request_id})


async def status_stream(request: Request, request_id: str, logs: str | None = None) -> Response:
    view = await visible_view(request, request_id)
    if view is None:
        return _not_found(request_id)
    events = _status_events(request, view, logs_wanted(logs))
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"x-fal-request-id": request_id, "Cache-Control": "no-cache"},
    )


async def result(request: Request, request_id: str) -> JSONResponse:
    view = await visible_view(request, request_id)
    if view is None:
        return _not_found(request_id)
    if view.status is not JobStatus.COMPLETED or view.outcome is None:
        return JSONResponse(
            {"detail": "Request is still in progress"},
            status_code=400,
            headers={"x-fal-request-id": request_id},
        )
    return outcome_response(view.outcome, request_id)


async def cancel(request: Request, request_id: str) -> JSONResponse:
    if await visible_view(request, request_id) is None:
        return _not_found(request_id)
    state = _state(request)
    result = await state.jobs.cancel(request_id)
    done = result.completed  # it was queued: no worker will send its webhook
    if done is not None and done.webhook_url and done.outcome and state.webhooks is not None:
        state.webhooks.send(done.webhook_url, done.id, done.outcome)
    code = {
        CancelOutcome.REQUESTED: 202,
        CancelOutcome.ALREADY_COMPLETED: 400,
        CancelOutcome.NOT_FOUND: 404,
    }[result.outcome]
    return JSONResponse(
        {"status": result.outcome.value},
        status_code=code,
        headers={"x-fal-request-id": request_id},
    )


async def _status_events(request: Request, first: JobView, with_logs: bool) -> AsyncIterator[str]:
    """One event per change; each carries only new log lines; closes after COMPLETED.

    Woken by the queue's change feed, not a timer; a comment line keeps idle connections open.
    A client that goes away ends the response (Starlette cancels this generator).
    """
    state = _state(request)
    base = base_url(request, state.settings)
    sent_logs = 0
    async with state.jobs.watching(first.id) as watch:
        view: JobView | None = first
        sent: tuple[Any, ...] | None = None
        while view is not None:
            key = (view.status, view.queue_position, len(view.logs) if with_logs else 0)
            if key != sent:
                body = status_body(view, base, with_logs=with_logs, logs_from=sent_logs)
                sent_logs = len(view.logs)
                sent = key
                yield f"data: {json.dumps(body)}\n\n"
                if view.status is JobStatus.COMPLETED:
                    return
            changed = await watch.next(view, timeout=STREAM_PING_SECONDS)
            if changed is view:
                yield ": ping\n\n"
            view = changed


def router_for(endpoints: Iterable[Endpoint]) -> APIRouter:
    """The queue routes of ``endpoints``: submit for each, and the request routes under the app
    id and under each endpoint id (the sub-path form)."""
    endpoints = tuple(endpoints)
    router = APIRouter(prefix="/queue", tags=["queue"], dependencies=[Depends(require_key)])
    for endpoint in endpoints:
        router.add_api_route(
            f"/{endpoint.id}",
            _submitter(endpoint),
            methods=["POST"],
            openapi_extra=submit_extra(endpoint),
            operation_id=operation_id("submit", endpoint),
            responses=SUBMIT_RESPONSES,
            summary=f"Submit to the queue: {endpoint.summary}",
        )
    # The app-id form answers for every endpoint (their outputs share one shape); each
    # endpoint's sub-path form declares its own output.
    forms: dict[str, tuple[str, type[BaseModel]]] = {}
    for endpoint in endpoints:
        forms.setdefault(endpoint.app_id, ("", Flux2Output))
    for endpoint in endpoints:
        if endpoint.id not in forms:
            name = operation_id("subpath", endpoint)
            forms[endpoint.id] = (f"_{name}", endpoint.output_model)
    for prefix, (suffix, output) in forms.items():
        _add_request_routes(router, prefix, suffix, output)
    return router


def _add_request_routes(
    router: APIRouter, prefix: str, suffix: str, output: type[BaseModel]
) -> None:
    base = f"/{prefix}/requests/{{request_id}}"
    router.add_api_route(
        f"{base}/status",
        status,
        methods=["GET"],
        operation_id=f"status{suffix}",
        summary="Queue status (202 while queued or running, 200 once completed)",
        responses=STATUS_RESPONSES,
    )
    router.add_api_route(
        f"{base}/status/stream",
        status_stream,
        methods=["GET"],
        operation_id=f"status_stream{suffix}",
        summary="Queue status as server-sent events; closes after COMPLETED",
        response_class=StreamingResponse,
        responses=STATUS_STREAM_RESPONSES,
    )
    router.add_api_route(
        base,
        result,
        methods=["GET"],
        operation_id=f"result{suffix}",
        summary="Queue result: the model's output, or its error",
        responses=result_responses(output),
    )
    router.add_api_route(
        f"{base}/cancel",
        cancel,
        methods=["PUT"],
        operation_id=f"cancel{suffix}",
        summary="Cancel a request",
        status_code=202,
        responses=CANCEL_RESPONSES,
    )
