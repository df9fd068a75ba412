"""Every way a job ends, built in one place: the :class:`~service.jobs.Outcome` of each.

An outcome is what a finished job answers with (its result's HTTP status, headers and body) and what
its status, webhook and metrics say. The bodies are fal's (docs/reference/fal-protocol.md §12),
rendered by :mod:`service.fal_errors`. Queue backends, the worker stages and the routes all take
their outcomes from here, so a given ending looks the same whichever path produced it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from core.errors import Flux2Error, InvalidRequest, RequestTimeout
from service.fal_errors import error_body, pydantic_problems
from service.jobs import Outcome

CANCELLED_MESSAGE = "Request was cancelled"
CANCELLED_TYPE = "client_cancelled"
LOST_WORKER_TYPE = "runner_disconnected"

#: A cancelled job: cancelled while queued, while held by a worker, or stopped mid-run.
CANCELLED = Outcome(
    status_code=499,
    body={"detail": CANCELLED_MESSAGE, "error_type": CANCELLED_TYPE},
    error=CANCELLED_MESSAGE,
    error_type=CANCELLED_TYPE,
)


def success(output: BaseModel, *, inference_time: float | None) -> Outcome:
    """A job that produced ``output`` (the endpoint's output model)."""
    return Outcome(status_code=200, body=output.model_dump(), inference_time=inference_time)


def failure(exc: Flux2Error) -> Outcome:
    """A job that failed with ``exc``: its fal error body, status and type."""
    error_type = exc.problems[0].type if isinstance(exc, InvalidRequest) else exc.code
    return Outcome(
        status_code=exc.http_status,
        body=error_body(exc),
        error=exc.message,
        error_type=error_type,
    )


def invalid_input(errors: list[Any]) -> Outcome:
    """A job whose input failed the schema (pydantic's ``errors()``, located under ``body``)."""
    problems = pydantic_problems(errors, prefix=("body",))
    return Outcome(
        status_code=422,
        body={"detail": problems},
        error=problems[0]["msg"] if problems else "Invalid input",
        error_type=problems[0]["type"] if problems else "value_error",
    )


def timed_out() -> Outcome:
    """fal's answer to a request that did not start within ``X-Fal-Request-Timeout``."""
    outcome = failure(RequestTimeout("Request timed out"))
    return Outcome(
        status_code=outcome.status_code,
        body=outcome.body,
        error=outcome.error,
        error_type=outcome.error_type,
        headers={"X-Fal-Request-Timeout-Type": "user"},
    )


def lost_worker(deliveries: int) -> Outcome:
    """A dead letter: the job's worker stopped responding ``deliveries`` times."""
    detail = (
        f"The worker running this request stopped responding {deliveries} times; "
        "it was not retried again"
    )
    return Outcome(
        status_code=500,
        body={"detail": detail, "error_type": LOST_WORKER_TYPE},
        error=detail,
        error_type=LOST_WORKER_TYPE,
    )
