"""What the routes share: making jobs from requests, and fal's status/submit bodies."""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from core.errors import InvalidRequest
from pipelines.types import MAX_PREVIEWS
from service import strict_json
from service.auth import ApiKeys
from service.endpoints import DEFAULT_ENDPOINT, Endpoint, EndpointInput
from service.guard import check_webhook_url
from service.jobs import Job, JobStatus, JobView, Outcome, Priority
from service.previews import PREVIEWS_HEADER
from service.schema import APP_ID
from service.settings import Settings

HEADER_SAFE_ID = re.compile(r"[\x21-\x7e]{1,128}")


@dataclass(frozen=True)
class JobUrls:
    response_url: str
    status_url: str
    cancel_url: str

    @classmethod
    def of(cls, base_url: str, job_id: str) -> JobUrls:
        root = f"{base_url}/queue/{APP_ID}/requests/{job_id}"
        return cls(response_url=root, status_url=f"{root}/status", cancel_url=f"{root}/cancel")


def base_url(request: Request, settings: Settings) -> str:
    """Where clients reach us: the configured public URL, else this request's origin."""
    http = settings.http
    if http.public_url:
        return http.public_url.rstrip("/")
    host = request.headers.get("host") or f"{http.host}:{http.port}"
    return f"{request.url.scheme}://{host}"


async def read_json_body(request: Request) -> Any:
    """The request body as strict JSON (:mod:`service.strict_json`); anything else is fal's 422.

    The body is read as JSON whatever its Content-Type says: the official clients send
    ``application/json``, and ``curl -d '{...}'`` (``application/x-www-form-urlencoded``)
    works too. A body that is not JSON is fal's 422 ``json_invalid``, whose message names a
    Content-Type that is not JSON's.
    """
    raw = await request.body()
    if not raw.strip():
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required"}]
        )
    try:
        return strict_json.loads(raw)
    except strict_json.InvalidJson as exc:
        reason = exc.reason
        content_type = request.headers.get("content-type", "")
        if content_type and not _is_json_media_type(content_type):
            reason += f" (the body must be JSON, not {content_type[:100]!r})"
        raise _json_invalid(f"JSON decode error: {reason}", reason, exc.position) from None


def _is_json_media_type(content_type: str) -> bool:
    kind, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _json_invalid(msg: str, reason: str, position: int | None = None) -> RequestValidationError:
    """FastAPI's 422 for a body that is not JSON; ``loc`` is ``["body", <character offset>]``."""
    return RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", position or 0),
                "msg": msg,
                "input": {},
                "ctx": {"error": reason},
            }
        ]
    )


def body_errors(errors: Any) -> RequestValidationError:
    """Schema errors of a body validated by hand, located under ``body`` as FastAPI does."""
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


def caller(request: Request) -> str | None:
    """Who is asking: the API key's fingerprint (None without keys). Raises Unauthorized."""
    keys: ApiKeys = request.app.state.flux2.keys
    return keys.identify(request.headers.get("authorization"))


def require_key(request: Request) -> None:
    """Router dependency: checks the API key before the body is even validated."""
    caller(request)


async def visible_view(request: Request, request_id: str) -> JobView | None:
    """The job, if it exists and belongs to the caller; None (answered 404) otherwise."""
    who = caller(request)
    view: JobView | None = await request.app.state.flux2.jobs.view(request_id)
    if view is None or view.owner != who:
        return None
    return view


def new_job(
    request: Request, settings: Settings, body: Any, endpoint: Endpoint = DEFAULT_ENDPOINT
) -> tuple[Job, Any]:
    """A job for ``body`` (parsed into ``endpoint``'s input model) and the validation error
    list (None when the input is valid; the job's ``input`` is None then)."""
    priority_header = request.headers.get("x-fal-queue-priority", "normal").lower()
    try:
        priority = Priority(priority_header)
    except ValueError:
        raise InvalidRequest(
            f"X-Fal-Queue-Priority must be 'normal' or 'low', not {priority_header!r}",
            loc=("header", "x-fal-queue-priority"),
            input=priority_header,
        ) from None
    deadline = None
    timeout_header = request.headers.get("x-fal-request-timeout")
    if timeout_header:
        try:
            seconds = float(timeout_header)
            if not math.isfinite(seconds):
                raise ValueError(timeout_header)
        except ValueError:
            raise InvalidRequest(
                "X-Fal-Request-Timeout must be a finite number of seconds",
                loc=("header", "x-fal-request-timeout"),
                input=timeout_header,
            ) from None
        deadline = time.time() + seconds
    previews = _previews_wanted(request.headers.get(PREVIEWS_HEADER))
    errors = None
    parsed: EndpointInput | None = None
    try:  # the one validation of the input: the job carries the typed value from here on
        parsed = endpoint.input_model.model_validate(body, from_attributes=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    job = Job(
        id=str(uuid.uuid4()),
        input=parsed,
        endpoint=endpoint.id,
        base_url=base_url(request, settings),
        webhook_url=check_webhook_url(request.query_params.get("fal_webhook") or None),
        priority=priority,
        start_deadline=deadline,
        owner=caller(request),
        previews=previews,
    )
    return job, errors


def _previews_wanted(header: str | None) -> int:
    """``X-Flux2-Previews``: step previews the client wants (service/previews.py), 0..3."""
    if header is None or not header.strip():
        return 0
    value = header.strip()
    if not value.isdigit() or not 0 <= int(value) <= MAX_PREVIEWS:
        raise InvalidRequest(
            f"{PREVIEWS_HEADER} must be a number of previews from 0 to {MAX_PREVIEWS}",
            loc=("header", PREVIEWS_HEADER),
            input=value,
        )
    return int(value)


def status_body(view: JobView, base: str, *, with_logs: bool, logs_from: int = 0) -> dict[str, Any]:
    """fal's status JSON (docs/reference/fal-protocol.md §4.1)."""
    urls = JobUrls.of(base, view.id)
    body: dict[str, Any] = {
        "status": view.status.value,
        "request_id": view.id,
        "response_url": urls.response_url,
        "status_url": urls.status_url,
        "cancel_url": urls.cancel_url,
        "logs": [entry.to_json() for entry in view.logs[logs_from:]] if with_logs else None,
    }
    if view.status is JobStatus.IN_QUEUE:
        body["queue_position"] = view.queue_position or 0
    if view.status is JobStatus.COMPLETED and view.outcome is not None:
        body["metrics"] = {"inference_time": view.outcome.inference_time}
        if not view.outcome.ok:
            body["error"] = view.outcome.error
            body["error_type"] = view.outcome.error_type
    return body


def outcome_response(outcome: Outcome, request_id: str) -> JSONResponse:
    """A finished job's answer: its output, or its error with fal's headers."""
    headers = {"x-fal-request-id": request_id, **outcome.headers}
    if outcome.error_type:
        headers["X-Fal-Error-Type"] = outcome.error_type
    return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


def request_id_header(request_id: str) -> dict[str, str]:
    """``x-fal-request-id`` for an id taken from the URL, when it can be a header value as it
    is (up to 128 visible ASCII characters: a job's ids are UUIDs); ``{}`` otherwise, and the
    request id middleware gives the response one of its own."""
    if HEADER_SAFE_ID.fullmatch(request_id):
        return {"x-fal-request-id": request_id}
    return {}


def logs_wanted(value: str | None) -> bool:
    """``?logs=`` is ``1``/``0`` from the JS client and ``true``/``false`` from the Python one."""
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
