"""The OpenAPI document: every status code, content type, body and header each route answers.

FastAPI derives a route's success body from its return type and knows nothing of the error
handlers, the middleware (413, 500, ``x-fal-request-id``), the API keys (401) or the finished
job's outcome that the sync run and the result route answer with (422, 499, 500, 503, 504).
Users generate clients from ``/openapi.json``, so this module says it all:

* the bodies as models: fal's 422 (:class:`ValidationErrors`), its other errors
  (:class:`FalError`), the queue's bodies (submit, status, cancel, ``NOT_FOUND``), readiness;
* ``responses=`` for each route (``RUN_RESPONSES``, ``SUBMIT_RESPONSES``, …), and the request
  body and header parameters of the two entry points (``RUN_EXTRA``, ``SUBMIT_EXTRA``);
* :func:`complete`, run on the generated document once: what is true of every route
  (``x-fal-request-id``, 500), what depends on the settings (401 and the key scheme when API
  keys are configured), the component schemas, and no FastAPI 422 where none can happen.

``tests/service/test_fuzz_openapi.py`` fuzzes a live server against the result.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from pipelines.types import MAX_PREVIEWS
from service import openapi_openai, openapi_storage
from service.endpoints import DEFAULT_ENDPOINT, Endpoint
from service.guard import MAX_URL_LENGTH
from service.jobs import JobStatus
from service.openapi_errors import (
    ERROR_TYPE_HEADER,
    INVALID,
    QUEUE_FULL,
    QUEUE_UNAVAILABLE,
    REF,
    RETRY_AFTER,
    SERVER_ERROR,
    TOO_LARGE,
    UNAUTHORIZED,
    FalError,
    ValidationErrors,
    no_default,
)
from service.openapi_errors import error_response as _error
from service.openapi_errors import header as _header
from service.openapi_errors import json_response as _json
from service.openapi_errors import optional as _optional
from service.openapi_errors import ref as _ref
from service.schema import Flux2Output, openapi_components

KEY_SCHEME = "FalKey"


# -- bodies -----------------------------------------------------------------------------------


class QueueNotFound(BaseModel):
    """No such request, or not the caller's (fal answers unknown ids so)."""

    status: Literal["NOT_FOUND"]
    detail: str | SkipJsonSchema[None] = _optional("Which request.")


class QueueSubmitted(BaseModel):
    """The submit answer: where to follow the request (fal-protocol.md §3)."""

    status: JobStatus = Field(description="`COMPLETED` at once when the input was invalid.")
    request_id: str
    gateway_request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int = Field(ge=0)


class RequestLog(BaseModel):
    """One log line (fal's `RequestLog`)."""

    message: str
    level: str = Field(description="`INFO`, `WARN`, `ERROR`, …")
    source: str = Field(description="`USER`")
    timestamp: str = Field(description="ISO 8601, UTC")


class QueueMetrics(BaseModel):
    inference_time: float | None = Field(description="Seconds on the engine, when it ran.")


class _QueueStatusBase(BaseModel):
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    logs: list[RequestLog] | None = Field(
        description="The log lines with `?logs=1` (in the stream, only the new ones); null "
        "otherwise."
    )


class QueuePending(_QueueStatusBase):
    """Queued or running: answered 202."""

    status: Literal["IN_QUEUE", "IN_PROGRESS"]
    queue_position: int | SkipJsonSchema[None] = Field(
        default=None,
        ge=0,
        description="While `IN_QUEUE`: 0 is next.",
        json_schema_extra=no_default,
    )


class QueueCompleted(_QueueStatusBase):
    """Done, successfully or not: answered 200. A failure carries `error` and `error_type`."""

    status: Literal["COMPLETED"]
    metrics: QueueMetrics | SkipJsonSchema[None] = _optional("Timings of a finished request.")
    error: str | SkipJsonSchema[None] = _optional("Why it failed, for a human.")
    error_type: str | SkipJsonSchema[None] = _optional("fal's type of the failure.")


class CancelRequested(BaseModel):
    """The request was queued (it is cancelled) or running (it stops at the next step)."""

    status: Literal["CANCELLATION_REQUESTED"]


class AlreadyCompleted(BaseModel):
    """The request had already finished: nothing to cancel."""

    status: Literal["ALREADY_COMPLETED"]


class LiveWorker(BaseModel):
    """A worker that announced itself in the shared queue lately (an API node's `/ready`)."""

    name: str
    state: str = Field(description="`loading`, `ready`, `busy`, `draining`, …")
    model: str | None = Field(description="The checkpoint it serves.")
    seen_seconds_ago: float = Field(ge=0)


class Readiness(BaseModel):
    """Whether a request sent now would be served: the queue is reachable and a worker (the
    embedded one, or on an API node any live worker sharing the queue) is ready."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "not_ready"]
    worker: str | None = Field(
        description="The embedded worker's state (`starting`, `ready`, `busy`, `setup_failed`, "
        "`defunct`), null on an API node."
    )
    workers: list[LiveWorker] | SkipJsonSchema[None] = _optional(
        "On an API node: the live workers sharing its queue."
    )
    reason: str | SkipJsonSchema[None] = _optional(
        "Why not ready: the queue is unreachable, no live worker, none ready yet."
    )
    error: str | SkipJsonSchema[None] = _optional("Why the embedded worker is not serving.")


#: Every model the responses below name, made components by :func:`complete`.
MODELS: tuple[type[BaseModel], ...] = (
    ValidationErrors,
    FalError,
    QueueNotFound,
    QueueSubmitted,
    QueuePending,
    QueueCompleted,
    CancelRequested,
    AlreadyCompleted,
    Readiness,
    Flux2Output,
    DEFAULT_ENDPOINT.output_model,
)


# -- responses --------------------------------------------------------------------------------


NOT_FOUND = _json(QueueNotFound, "No such request (or it expired, or it is another key's).")

IMAGE_PROBLEMS = (
    "an image could not be downloaded or read (`file_download_error`, `image_load_error`, "
    "`unsupported_image_format`, `image_too_large`, `image_too_small`)"
)


# What a finished job answers with, on the sync run and the result route (service/outcomes.py).
def outcome_responses(output: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """What a finished job answers with, on the sync run and the result route
    (service/outcomes.py), for an endpoint whose output is ``output``."""
    return {
        200: _json(output, "The output."),
        422: _json(
            ValidationErrors,
            f"fal's validation error: the input is invalid, or {IMAGE_PROBLEMS}.",
            ERROR_TYPE_HEADER,
        ),
        499: _error("The request was cancelled (`client_cancelled`)."),
        500: SERVER_ERROR,
        503: _error(
            "The engine ran out of memory (`runner_server_error`), the worker cannot run "
            "(`runner_connection_error`), or the queue cannot be reached for now "
            "(`runner_scheduling_failure`, with `Retry-After`).",
            **{"Retry-After": _header(f"{RETRY_AFTER} (when the queue cannot be reached)")},
        ),
        504: _error(
            "The request did not start within its `X-Fal-Request-Timeout` (`request_timeout`).",
            **{"X-Fal-Request-Timeout-Type": _header("`user`: the clients do not retry it.")},
        ),
    }


#: The flash edit's outcomes (the default endpoint).
OUTCOME_RESPONSES = outcome_responses(DEFAULT_ENDPOINT.output_model)


def _request_body(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "required": True,
        "description": "The input, as JSON (strict: no NaN, no duplicate keys). It is read as "
        "JSON whatever the Content-Type says; the fal clients send `application/json`.",
        "content": {"application/json": {"schema": _ref(endpoint.input_model)}},
    }


_TIMEOUT_HEADER = {
    "name": "X-Fal-Request-Timeout",
    "in": "header",
    "required": False,
    "description": "Seconds the request may wait to start; past that it ends with 504 "
    "`request_timeout`.",
    "schema": {"type": "number"},
}
_PRIORITY_HEADER = {
    "name": "X-Fal-Queue-Priority",
    "in": "header",
    "required": False,
    "description": "`low` requests run after every `normal` one (case-insensitive).",
    "schema": {"type": "string", "enum": ["normal", "low"], "default": "normal"},
}
_PREVIEWS_HEADER = {
    "name": "X-Flux2-Previews",
    "in": "header",
    "required": False,
    "description": f"Step previews wanted (0..{MAX_PREVIEWS}): each is announced in the request's "
    "logs (`preview 1/2 (step 3/8): <url>`) as the worker makes it.",
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PREVIEWS, "default": 0},
}
_WEBHOOK_QUERY = {
    "name": "fal_webhook",
    "in": "query",
    "required": False,
    "description": "An http(s) URL that gets fal's webhook when the request completes.",
    "schema": {"type": "string", "maxLength": MAX_URL_LENGTH},
}


def run_extra(endpoint: Endpoint) -> dict[str, Any]:
    """The body and header parameters of ``endpoint``'s sync run."""
    return {
        "requestBody": _request_body(endpoint),
        "parameters": [_TIMEOUT_HEADER, _PRIORITY_HEADER, _PREVIEWS_HEADER],
    }


def submit_extra(endpoint: Endpoint) -> dict[str, Any]:
    """The body, query and header parameters of ``endpoint``'s queue submit."""
    return {
        "requestBody": _request_body(endpoint),
        "parameters": [_WEBHOOK_QUERY, _TIMEOUT_HEADER, _PRIORITY_HEADER, _PREVIEWS_HEADER],
    }


RUN_EXTRA = run_extra(DEFAULT_ENDPOINT)
SUBMIT_EXTRA = submit_extra(DEFAULT_ENDPOINT)


def run_responses(endpoint: Endpoint) -> dict[int | str, dict[str, Any]]:
    """Everything ``endpoint``'s sync run answers."""
    return {
        **outcome_responses(endpoint.output_model),
        413: TOO_LARGE,
        422: _json(
            ValidationErrors,
            "fal's validation error: the body is not JSON (`json_invalid`), the input or a header "
            f"is invalid, or {IMAGE_PROBLEMS}.",
            ERROR_TYPE_HEADER,
        ),
        429: QUEUE_FULL,
    }


RUN_RESPONSES = run_responses(DEFAULT_ENDPOINT)

_FOLLOW = {
    name: {
        "operationId": operation,
        "parameters": {"request_id": "$response.body#/request_id"},
        "description": description,
    }
    for name, operation, description in (
        ("status", "status", "Poll the request's status."),
        ("status_stream", "status_stream", "Follow the request's status as events."),
        ("result", "result", "Fetch the request's output (or error) once it completed."),
        ("cancel", "cancel", "Cancel the request."),
    )
}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        **_json(QueueSubmitted, "Queued (or completed at once with fal's 422)."),
        "links": _FOLLOW,
    },
    413: TOO_LARGE,
    422: INVALID,
    429: QUEUE_FULL,
    503: QUEUE_UNAVAILABLE,
}
STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(QueueCompleted, "Completed, successfully or not."),
    202: _json(QueuePending, "Queued or running."),
    404: NOT_FOUND,
    503: QUEUE_UNAVAILABLE,
}
STATUS_STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One event per change, `data: <the status body>`, with only the new "
        "log lines; `: ping` comments keep it open; it closes after `COMPLETED`.",
        "content": {
            "text/event-stream": {
                # One event (FastAPI's SSE convention; Open API 3.2's itemSchema).
                "itemSchema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"anyOf": [_ref(QueuePending), _ref(QueueCompleted)]},
                        },
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "retry": {"type": "integer", "minimum": 0},
                    },
                }
            }
        },
    },
    404: NOT_FOUND,
    503: QUEUE_UNAVAILABLE,
}


def result_responses(output: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """Everything the result route answers, for requests whose output is ``output``."""
    return {
        **outcome_responses(output),
        400: _json(FalError, "The request has not completed yet."),
        404: NOT_FOUND,
    }


RESULT_RESPONSES = result_responses(DEFAULT_ENDPOINT.output_model)
CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: _json(CancelRequested, "Cancelled, or stopping at its next step."),
    400: _json(AlreadyCompleted, "The request had already completed."),
    404: NOT_FOUND,
    503: QUEUE_UNAVAILABLE,
}
IMAGE_CONTENT = {"schema": {"type": "string", "format": "binary"}}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image, as the request's `output_format` asked.",
        "content": {f"image/{kind}": IMAGE_CONTENT for kind in ("png", "jpeg", "webp")},
        "headers": {"Cache-Control": _header("`private, max-age=3600`", required=True)},
    },
    404: _error("No such file (or its request expired, or it is another key's)."),
    503: QUEUE_UNAVAILABLE,
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(Readiness, "Ready: the worker (if any) serves requests."),
    503: _json(
        Readiness,
        "Not ready (`reason` says why): the queue is unreachable, no worker is live or ready, "
        "or the embedded worker is starting or failed.",
    ),
}
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The Prometheus text format.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
}


# -- the document -----------------------------------------------------------------------------

REQUEST_ID_HEADER = _header(
    "The request's id (the job's, on the queue routes and the sync run; the fal clients read it).",
    required=True,
)
#: FastAPI's own 422, which it declares for every route with parameters; ours say when it is.
FASTAPI_VALIDATION = REF.format(model="HTTPValidationError")


def components(endpoints: tuple[Endpoint, ...] = (DEFAULT_ENDPOINT,)) -> dict[str, Any]:
    """The component schemas: the inputs and outputs of ``endpoints`` (and their parts) and
    every model of :data:`MODELS`, :data:`service.openapi_storage.MODELS` and
    :data:`service.openapi_openai.MODELS`."""
    outputs = tuple(dict.fromkeys(endpoint.output_model for endpoint in endpoints))
    models = (*MODELS, *outputs, *openapi_storage.MODELS, *openapi_openai.MODELS)
    models = tuple(dict.fromkeys(models))
    _, schema = models_json_schema([(model, "serialization") for model in models], ref_template=REF)
    found: dict[str, Any] = dict(schema.get("$defs", {}))
    found.update(openapi_components(tuple(dict.fromkeys(e.input_model for e in endpoints))))
    return found


def complete(
    document: dict[str, Any],
    *,
    protected: set[str],
    api_keys: bool,
    endpoints: tuple[Endpoint, ...] = (DEFAULT_ENDPOINT,),
) -> dict[str, Any]:
    """``document`` (FastAPI's) made whole, in place.

    Args:
        document: what ``FastAPI.openapi()`` generated.
        protected: the operation ids that check the API key.
        api_keys: whether keys are configured (only then do those operations answer 401).
        endpoints: the endpoints served (their inputs and outputs become components).
    """
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components(endpoints))
    schemes: dict[str, Any] = dict(openapi_storage.SCHEMES)  # checked with or without keys
    if api_keys:
        schemes[KEY_SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Key <your key>` (or `Bearer <your key>`), as the fal clients "
            "send `FAL_KEY`.",
        }
        schemes[openapi_openai.KEY_SCHEME] = openapi_openai.SCHEME
    document["components"]["securitySchemes"] = schemes
    for path, item in document.get("paths", {}).items():
        openai = path.startswith(openapi_openai.PREFIX)  # OpenAI's error shape
        for operation in item.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if FASTAPI_VALIDATION in _refs(responses.get("422", {})):
                del responses["422"]  # its parameters are plain strings: nothing to refuse
            if api_keys and operation.get("operationId") in protected:
                scheme = openapi_openai.KEY_SCHEME if openai else KEY_SCHEME
                operation["security"] = [{scheme: []}]
                unauthorized = openapi_openai.UNAUTHORIZED if openai else UNAUTHORIZED
                responses["401"] = copy.deepcopy(unauthorized)
            server_error = openapi_openai.SERVER_ERROR if openai else SERVER_ERROR
            responses.setdefault("500", copy.deepcopy(server_error))
            operation["responses"] = responses = dict(sorted(responses.items()))
            for response in responses.values():
                headers = response.setdefault("headers", {})
                headers["x-fal-request-id"] = copy.deepcopy(REQUEST_ID_HEADER)
            _hoist_defs(operation.get("requestBody", {}), schemas)
    if FASTAPI_VALIDATION not in _refs(document.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


def _hoist_defs(value: Any, schemas: dict[str, Any]) -> None:
    """Moves the ``$defs`` of inline schemas (:func:`service.openapi_errors.model_schema`) to
    the components, where their references point."""
    if isinstance(value, dict):
        schemas.update(value.pop("$defs", {}))
        for item in value.values():
            _hoist_defs(item, schemas)
    elif isinstance(value, list):
        for item in value:
            _hoist_defs(item, schemas)


def _refs(value: Any) -> Iterator[str]:
    """Every ``$ref`` in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)
