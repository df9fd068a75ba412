"""The OpenAPI pieces every route family shares: fal's error bodies and answers, and the helpers
that write a response, a header and a component reference.

:mod:`service.openapi` (the fal routes, and the whole document), :mod:`service.openapi_storage`
and :mod:`service.openapi_openai` build their routes' ``responses=`` from these.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

REF = "#/components/schemas/{model}"


def no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(description: str) -> Any:
    """A key that is absent, never null, when it does not apply."""
    return Field(default=None, description=description, json_schema_extra=no_default)


# -- fal's error bodies ------------------------------------------------------------------------


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
    ctx: dict[str, Any] | SkipJsonSchema[None] = optional("The rule's parameters, e.g. `{le: 20}`")
    input: Any = optional("The offending value.")


class ValidationErrors(BaseModel):
    """fal's 422: the input (or a header, or the webhook URL) is invalid."""

    detail: list[ValidationProblem]


class FalError(BaseModel):
    """fal's other errors: `{"detail": "<message>", "error_type": "<fal request error type>"}`."""

    detail: str
    error_type: str | SkipJsonSchema[None] = optional(
        "fal's error type, e.g. `request_too_large`, `unauthorized`, `concurrent_requests_limit`, "
        "`client_cancelled`, `internal_server_error`, `runner_server_error`, "
        "`request_timeout`; also sent as `X-Fal-Error-Type`."
    )


# -- answers ----------------------------------------------------------------------------------


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def header(description: str, *, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": "string"}}


RETRY_AFTER = "Seconds to wait before trying again."
ERROR_TYPE_HEADER = {"X-Fal-Error-Type": header("fal's error type, as in the body.")}


def json_response(
    model: type[BaseModel] | dict[str, Any],
    description: str,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    schema = model if isinstance(model, dict) else ref(model)
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def error_response(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return json_response(FalError, description, {**ERROR_TYPE_HEADER, **headers})


INVALID = json_response(
    ValidationErrors,
    "fal's validation error: the input, a header or the webhook URL is invalid, or the body is "
    "not JSON (`json_invalid`).",
    ERROR_TYPE_HEADER,
)
TOO_LARGE = error_response("The body is larger than `FLUX2_MAX_BODY_BYTES` (`request_too_large`).")
QUEUE_FULL = error_response(
    "Too many requests are waiting (`concurrent_requests_limit`); the fal clients retry it.",
    **{"Retry-After": header(RETRY_AFTER, required=True)},
)
UNAUTHORIZED = error_response(
    "No API key, or a wrong one (`unauthorized`): send `Authorization: Key <key>`.",
    **{"WWW-Authenticate": header("`Key`", required=True)},
)
SERVER_ERROR = error_response(
    "An unexpected error (`internal_error`), or a request that failed in the engine "
    "(`internal_server_error`) or lost its worker (`runner_disconnected`)."
)
QUEUE_UNAVAILABLE = error_response(
    "The queue or the file store (Redis) cannot be reached for now "
    "(`runner_scheduling_failure`); the fal clients retry it.",
    **{"Retry-After": header(RETRY_AFTER, required=True)},
)


def json_body(schema: dict[str, Any], description: str, *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body by hand (after the key check)."""
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, inline; the models it uses are in its ``$defs``, which
    :func:`service.openapi.complete` moves to the components."""
    schema: dict[str, Any] = model.model_json_schema(ref_template=REF)
    return schema
