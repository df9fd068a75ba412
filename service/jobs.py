"""Jobs as the queues store them: records with a typed input, serialisable to JSON (no torch, no
HTTP).

A job carries its input as the endpoint's pydantic model, parsed once at the HTTP edge. Backends
that store JSON (Redis) write it with :meth:`Job.to_json` and read it back into the same type with
:meth:`Job.from_json`; an input that no longer parses (a record written by another version, or
tampered with) leaves ``input`` unset and says why in ``input_error``, and the worker fails that
job cleanly instead of running it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from service.endpoints import DEFAULT_ENDPOINT, ENDPOINTS, EndpointInput


class JobStatus(StrEnum):
    """fal's three queue states; a failed or cancelled job is COMPLETED with an error."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Priority(StrEnum):
    NORMAL = "normal"
    LOW = "low"


class CancelOutcome(StrEnum):
    REQUESTED = "CANCELLATION_REQUESTED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True)
class LogEntry:
    """One line of a job's logs, in fal's ``RequestLog`` shape."""

    message: str
    level: str = "INFO"
    source: str = "USER"
    timestamp: str = field(
        default_factory=lambda: datetime.now(UTC).replace(tzinfo=None).isoformat()
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "level": self.level,
            "source": self.source,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogEntry:
        return cls(**data)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: the HTTP status and body its result answers with.

    A success is ``status_code`` 200 with the output JSON; a failure carries fal's error body
    (``{"detail": ...}``) plus ``error``/``error_type`` for the status endpoint.
    """

    status_code: int
    body: dict[str, Any]
    error: str | None = None
    error_type: str | None = None
    inference_time: float | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra result headers

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(**data)


@dataclass
class Job:
    """A queued request.

    ``input`` is the endpoint's validated input. It is None for a request refused at the edge
    (recorded with ``finish_now``: it never runs) and for a stored record whose input could not
    be read back (``input_error`` says why; the worker fails such a job).
    """

    id: str
    input: EndpointInput | None
    base_url: str
    endpoint: str = DEFAULT_ENDPOINT.id
    webhook_url: str | None = None
    priority: Priority = Priority.NORMAL
    start_deadline: float | None = None  # unix time by which it must start (X-Fal-Request-Timeout)
    created_at: float = field(default_factory=time.time)
    status: JobStatus = JobStatus.IN_QUEUE
    started_at: float | None = None
    completed_at: float | None = None
    logs: list[LogEntry] = field(default_factory=list)
    outcome: Outcome | None = None
    cancel_requested: bool = False
    deliveries: int = 0  # how many times a worker claimed it (crash recovery counts up)
    owner: str | None = None  # fingerprint of the API key that submitted it
    previews: int = 0  # step previews wanted (0..3): service/previews.py
    output_compression: int | None = None  # JPEG/WebP quality asked for (OpenAI); None: ours
    input_error: str | None = None  # why a stored input could not be parsed back (not stored)

    @property
    def num_images(self) -> int:
        """Output images the job asks for (1 when its input is unreadable)."""
        return self.input.num_images if self.input is not None else 1

    def to_json(self) -> dict[str, Any]:
        """Everything but the logs, which backends keep apart (they grow during a run)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("logs", "input_error"):
            data.pop(name)
        data["input"] = None if self.input is None else self.input.model_dump(mode="json")
        data["outcome"] = self.outcome.to_json() if self.outcome else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], logs: list[LogEntry] | None = None) -> Job:
        """The job ``data`` (from :meth:`to_json`) describes, its input parsed back into the
        endpoint's model; an unreadable input is recorded in ``input_error``."""
        values = dict(data)
        outcome = values.pop("outcome", None)
        raw_input = values.pop("input", None)
        endpoint_id = values.setdefault("endpoint", DEFAULT_ENDPOINT.id)
        parsed, error = _parse_input(endpoint_id, raw_input)
        return cls(
            **values,
            input=parsed,
            input_error=error,
            logs=list(logs or []),
            outcome=Outcome.from_json(outcome) if outcome else None,
        )

    def __post_init__(self) -> None:
        self.status = JobStatus(self.status)
        self.priority = Priority(self.priority)


def _parse_input(endpoint_id: str, raw: Any) -> tuple[EndpointInput | None, str | None]:
    if raw is None:
        return None, None
    endpoint = ENDPOINTS.get(endpoint_id)
    if endpoint is None:
        return None, f"unknown endpoint {endpoint_id!r}"
    try:
        return endpoint.input_model.model_validate(raw), None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        return None, f"the stored input does not match {endpoint_id}: {problems}"


@dataclass(frozen=True)
class CancelResult:
    """What ``JobQueue.cancel`` did. ``completed`` is the job when the cancel completed it
    itself (it was still queued): nobody else will, so its webhook is the caller's to send."""

    outcome: CancelOutcome
    completed: Job | None = None


@dataclass(frozen=True)
class Reaped:
    """What ``JobQueue.reap`` did: ids of jobs put back in the queue (their worker died), and the
    jobs it completed as failed instead (dead letters), whose webhooks are now due."""

    requeued: tuple[str, ...] = ()
    failed: tuple[Job, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed)


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as it announces itself (every few seconds) so API nodes know who is alive.

    ``state`` is the worker's :class:`~service.status.WorkerState` value (``starting`` while the
    model loads, ``ready``, ``busy``, ``draining``, ...); ``seen_at`` is the unix time of the
    announcement.
    """

    name: str
    state: str
    model: str | None = None
    host: str = ""
    pid: int = 0
    seen_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerInfo:
        return cls(**data)


@dataclass(frozen=True)
class JobView:
    """What the status endpoint needs, read in one go."""

    id: str
    status: JobStatus
    queue_position: int | None
    logs: tuple[LogEntry, ...]
    outcome: Outcome | None
    owner: str | None = None
