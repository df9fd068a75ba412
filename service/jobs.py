"""Jobs as the queue stores them: plain, JSON-serialisable records (no torch, no HTTP)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


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
    """A queued edit. ``input`` is the validated fal input as JSON."""

    id: str
    input: dict[str, Any]
    base_url: str
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

    def to_json(self) -> dict[str, Any]:
        """Everything but the logs, which backends keep apart (they grow during a run)."""
        data = asdict(self)
        data.pop("logs")
        data["outcome"] = self.outcome.to_json() if self.outcome else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], logs: list[LogEntry] | None = None) -> Job:
        fields = dict(data)
        outcome = fields.pop("outcome", None)
        return cls(
            **fields,
            logs=list(logs or []),
            outcome=Outcome.from_json(outcome) if outcome else None,
        )

    def __post_init__(self) -> None:
        self.status = JobStatus(self.status)
        self.priority = Priority(self.priority)


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
class JobView:
    """What the status endpoint needs, read in one go."""

    id: str
    status: JobStatus
    queue_position: int | None
    logs: tuple[LogEntry, ...]
    outcome: Outcome | None
    owner: str | None = None
