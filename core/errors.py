"""The one error hierarchy of flux2-edit, with stable machine codes.

Codes follow fal's own vocabulary (``type`` for model/validation errors, ``error_type`` for
request errors) so that the HTTP layer can render every error once, in fal's format. This module
is plain Python: the engine, the weights tools and the HTTP layer all raise these.

Our exception hierarchy::

    Flux2Error                      (code, message, http_status)
    ├── InvalidRequest              422  value_error, or the fal "type" given (loc, ctx, input)
    │   ├── ImageLoadError          422  image_load_error
    │   ├── UnsupportedImageFormat  422  unsupported_image_format
    │   ├── ImageTooLarge           422  image_too_large
    │   ├── ImageTooSmall           422  image_too_small
    │   └── FileDownloadError       422  file_download_error
    ├── NotFound                    404  not_found
    ├── Unauthorized                401  unauthorized
    ├── QueueFull                   429  concurrent_requests_limit (clients retry it)
    ├── Cancelled                   499  client_cancelled
    ├── GenerationFailed            500  internal_server_error   (recoverable: the job fails)
    │   └── OutOfMemory             503  runner_server_error     (the worker splits the batch)
    ├── RequestTimeout              504  request_timeout         (X-Fal-Request-Timeout passed)
    ├── WorkerDead                  503  runner_connection_error (fatal: restart the worker)
    ├── UnreadableJob               500  internal_server_error   (a stored job cannot be parsed)
    ├── StorageError                500  internal_error
    │   └── QueueUnavailable        503  runner_scheduling_failure (Redis unreachable: retry)
    ├── WeightsError                500  weights_error           (start-up: setup_failed)
    └── ConfigError                 500  config_error            (bad settings or arguments)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


class Flux2Error(Exception):
    """Base of every error flux2-edit raises on purpose."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


@dataclass(frozen=True)
class FieldProblem:
    """One entry of fal's ``{"detail": [...]}`` list: where, what and why."""

    loc: tuple[str | int, ...]
    msg: str
    type: str
    ctx: dict[str, Any] = field(default_factory=dict)
    input: Any = None


class InvalidRequest(Flux2Error):
    """The request is wrong; ``problems`` say which fields and why (rendered as fal's 422)."""

    code = "value_error"
    http_status = 422

    def __init__(
        self,
        message: str,
        *,
        loc: tuple[str | int, ...] = ("body",),
        type: str | None = None,  # noqa: A002 - fal's field name
        ctx: dict[str, Any] | None = None,
        input: Any = None,  # noqa: A002 - fal's field name
    ) -> None:
        super().__init__(message)
        self.problems: list[FieldProblem] = [
            FieldProblem(loc=loc, msg=message, type=type or self.code, ctx=ctx or {}, input=input)
        ]


class ImageLoadError(InvalidRequest):
    code = "image_load_error"


class UnsupportedImageFormat(InvalidRequest):
    code = "unsupported_image_format"


class ImageTooLarge(InvalidRequest):
    code = "image_too_large"


class ImageTooSmall(InvalidRequest):
    code = "image_too_small"


class FileDownloadError(InvalidRequest):
    code = "file_download_error"


class NotFound(Flux2Error):
    code = "not_found"
    http_status = 404


class Unauthorized(Flux2Error):
    """No API key, or a wrong one."""

    code = "unauthorized"
    http_status = 401


class QueueFull(Flux2Error):
    """Too many requests are waiting; answered 429 with Retry-After."""

    code = "concurrent_requests_limit"
    http_status = 429


class Cancelled(Flux2Error):
    """The job was cancelled; raised inside the engine to stop at once (no decode)."""

    code = "client_cancelled"
    http_status = 499


class GenerationFailed(Flux2Error):
    """A job failed in the engine; recoverable: the worker goes on with the next batch."""

    code = "internal_server_error"
    http_status = 500


class OutOfMemory(GenerationFailed):
    """The accelerator ran out of memory; the worker retries smaller batches first."""

    code = "runner_server_error"
    http_status = 503


class RequestTimeout(Flux2Error):
    """The request did not start before its ``X-Fal-Request-Timeout``."""

    code = "request_timeout"
    http_status = 504


class WorkerDead(Flux2Error):
    """The worker cannot go on (lost GPU, corrupted state); fatal: restart it."""

    code = "runner_connection_error"
    http_status = 503


class UnreadableJob(Flux2Error):
    """A stored job cannot be read back (written by another version, or corrupted): it fails
    cleanly instead of running or breaking the worker."""

    code = "internal_server_error"
    http_status = 500


class StorageError(Flux2Error):
    code = "internal_error"
    http_status = 500


class QueueUnavailable(StorageError):
    """The queue or the store cannot be reached (Redis down or restarting). Transient: API
    nodes answer 503 with Retry-After, workers wait and retry."""

    code = "runner_scheduling_failure"
    http_status = 503


class WeightsError(Flux2Error):
    """Weights are missing, incomplete, gated or unreadable."""

    code = "weights_error"
    http_status = 500


class ConfigError(Flux2Error):
    """A setting or command-line argument is wrong."""

    code = "config_error"
    http_status = 500
