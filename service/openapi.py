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

from service.endpoints import DEFAULT_ENDPOINT
from service.guard import MAX_URL_LENGTH
from service.jobs import JobStatus
from service.schema import openapi_components

REF = "#/components/schemas/{model}"
KEY_SCHEME = "FalKey"


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(description: str) -> Any:
    """A key that is absent, never null, when it does not apply."""
    return Field(default=None, description=description, json_schema_extra=_no_default)


# -- bodies -----------------------------------------------------------------------------------


class ValidationProblem(BaseModel):
    """One entry of fal's 422 list (fal-protocol.md §12.1)."""

    loc: list[str | int] = Field(
        description="Where: `['body', 'image_urls', 0]`, `['header', 'x-fal-request-timeout']`, "
        "`['query', 'fal_webhook']`; `['body', <offset>]` for a body that is not JSON."
    )
    msg: str = Field(description="What is wrong, for a human.")
    type: str = Field(
        description="fal's error type: `json_invalid`, `missing`, `less_than_equal`, "
        "`file_download_error`, `image_load_error`, …"
    )
    url: str = Field(description="`https://docs.fal.ai/errors/#<type>`")
    ctx: dict[str, Any] | SkipJsonSchema[None] = _optional("The rule's parameters, e.g. `{le: 20}`")
    input: Any = _optional("The offending value.")


class ValidationErrors(BaseModel):
    """fal's 422: the input (or a header, or the webhook URL) is invalid."""

    detail: list[ValidationProblem]


class FalError(BaseModel):
    """fal's other errors: `{"detail": "<message>", "error_type": "<fal request error type>"}`."""

    detail: str
    error_type: str | SkipJsonSchema[None] = _optional(
        "fal's error type, e.g. `request_too_large`, `unauthorized`, `concurrent_requests_limit`, "
        "`client_cancelled`, `internal_server_error`, `runner_server_error`, "
        "`request_timeout`; also sent as `X-Fal-Error-Type`."
    )


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
        json_schema_extra=_no_default,
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


class Readiness(BaseModel):
    """Whether this process serves requests, with its embedded worker's state (if any)."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(description="`ready` or `not_ready`")
    worker: str | None = Field(
        description="The embedded worker's state (`starting`, `ready`, `busy`, `setup_failed`, "
        "`defunct`), null on an API node."
    )
    error: str | SkipJsonSchema[None] = _optional("Why the worker is not serving.")


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
    DEFAULT_ENDPOINT.output_model,
)


# -- responses --------------------------------------------------------------------------------


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _header(description: str, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


ERROR_TYPE_HEADER = {"X-Fal-Error-Type": _header("fal's error type, as in the body.")}


def _json(
    model: type[BaseModel] | dict[str, Any],
    description: str,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else _ref(model)
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return _json(FalError, description, {**ERROR_TYPE_HEADER, **headers})


INVALID = _json(
    ValidationErrors,
    "fal's validation error: the input, a header or the webhook URL is invalid, or the body is "
    "not JSON (`json_invalid`).",
    ERROR_TYPE_HEADER,
)
TOO_LARGE = _error("The body is larger than `FLUX2_MAX_BODY_BYTES` (`request_too_large`).")
QUEUE_FULL = _error(
    "Too many requests are waiting (`concurrent_requests_limit`); the fal clients retry it.",
    **{"Retry-After": _header("Seconds to wait before trying again.", required=True)},
)
UNAUTHORIZED = _error(
    "No API key, or a wrong one (`unauthorized`): send `Authorization: Key <key>`.",
    **{"WWW-Authenticate": _header("`Key`", required=True)},
)
SERVER_ERROR = _error(
    "An unexpected error (`internal_error`), or a request that failed in the engine "
    "(`internal_server_error`) or lost its worker (`runner_disconnected`)."
)
NOT_FOUND = _json(QueueNotFound, "No such request (or it expired, or it is another key's).")

IMAGE_PROBLEMS = (
    "an image could not be downloaded or read (`file_download_error`, `image_load_error`, "
    "`unsupported_image_format`, `image_too_large`, `image_too_small`)"
)
# What a finished job answers with, on the sync run and the result route (service/outcomes.py).
OUTCOME_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(DEFAULT_ENDPOINT.output_model, "The output."),
    422: _json(
        ValidationErrors,
        f"fal's validation error: the input is invalid, or {IMAGE_PROBLEMS}.",
        ERROR_TYPE_HEADER,
    ),
    499: _error("The request was cancelled (`client_cancelled`)."),
    500: SERVER_ERROR,
    503: _error(
        "The engine ran out of memory (`runner_server_error`) or the worker cannot run "
        "(`runner_connection_error`)."
    ),
    504: _error(
        "The request did not start within its `X-Fal-Request-Timeout` (`request_timeout`).",
        **{"X-Fal-Request-Timeout-Type": _header("`user`: the clients do not retry it.")},
    ),
}

_REQUEST_BODY = {
    "required": True,
    "description": "The input, as JSON (strict: no NaN, no duplicate keys). It is read as JSON "
    "whatever the Content-Type says; the fal clients send `application/json`.",
    "content": {"application/json": {"schema": _ref(DEFAULT_ENDPOINT.input_model)}},
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
_WEBHOOK_QUERY = {
    "name": "fal_webhook",
    "in": "query",
    "required": False,
    "description": "An http(s) URL that gets fal's webhook when the request completes.",
    "schema": {"type": "string", "maxLength": MAX_URL_LENGTH},
}

RUN_EXTRA: dict[str, Any] = {
    "requestBody": _REQUEST_BODY,
    "parameters": [_TIMEOUT_HEADER, _PRIORITY_HEADER],
}
SUBMIT_EXTRA: dict[str, Any] = {
    "requestBody": _REQUEST_BODY,
    "parameters": [_WEBHOOK_QUERY, _TIMEOUT_HEADER, _PRIORITY_HEADER],
}

RUN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OUTCOME_RESPONSES,
    413: TOO_LARGE,
    422: _json(
        ValidationErrors,
        "fal's validation error: the body is not JSON (`json_invalid`), the input or a header "
        f"is invalid, or {IMAGE_PROBLEMS}.",
        ERROR_TYPE_HEADER,
    ),
    429: QUEUE_FULL,
}

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
}
STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(QueueCompleted, "Completed, successfully or not."),
    202: _json(QueuePending, "Queued or running."),
    404: NOT_FOUND,
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
}
RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OUTCOME_RESPONSES,
    400: _json(FalError, "The request has not completed yet."),
    404: NOT_FOUND,
}
CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: _json(CancelRequested, "Cancelled, or stopping at its next step."),
    400: _json(AlreadyCompleted, "The request had already completed."),
    404: NOT_FOUND,
}
IMAGE_CONTENT = {"schema": {"type": "string", "format": "binary"}}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image, as the request's `output_format` asked.",
        "content": {f"image/{kind}": IMAGE_CONTENT for kind in ("png", "jpeg", "webp")},
        "headers": {"Cache-Control": _header("`private, max-age=3600`", required=True)},
    },
    404: _error("No such file (or its request expired, or it is another key's)."),
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _json(Readiness, "Ready: the worker (if any) serves requests."),
    503: _json(Readiness, "Not ready: the worker is starting, or failed."),
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


def components() -> dict[str, Any]:
    """The component schemas: the input (and its parts) and every model of :data:`MODELS`."""
    _, schema = models_json_schema([(model, "serialization") for model in MODELS], ref_template=REF)
    found: dict[str, Any] = dict(schema.get("$defs", {}))
    found.update(openapi_components())
    return found


def complete(document: dict[str, Any], *, protected: set[str], api_keys: bool) -> dict[str, Any]:
    """``document`` (FastAPI's) made whole, in place.

    Args:
        document: what ``FastAPI.openapi()`` generated.
        protected: the operation ids that check the API key.
        api_keys: whether keys are configured (only then do those operations answer 401).
    """
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components())
    if api_keys:
        document["components"]["securitySchemes"] = {
            KEY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Key <your key>` (or `Bearer <your key>`), as the fal clients "
                "send `FAL_KEY`.",
            }
        }
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if FASTAPI_VALIDATION in _refs(responses.get("422", {})):
                del responses["422"]  # its parameters are plain strings: nothing to refuse
            if api_keys and operation.get("operationId") in protected:
                operation["security"] = [{KEY_SCHEME: []}]
                responses["401"] = copy.deepcopy(UNAUTHORIZED)
            responses.setdefault("500", copy.deepcopy(SERVER_ERROR))
            operation["responses"] = responses = dict(sorted(responses.items()))
            for response in responses.values():
                headers = response.setdefault("headers", {})
                headers["x-fal-request-id"] = copy.deepcopy(REQUEST_ID_HEADER)
    if FASTAPI_VALIDATION not in _refs(document.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return document


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
