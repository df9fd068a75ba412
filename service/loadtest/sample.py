"""One request's record: what the result file keeps for every request the load test made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How a request ended."""

    OK = "ok"  # the endpoint answered with an output
    ERROR = "error"  # it answered with an error, or the client raised (error_type says which)
    DROPPED = "dropped"  # open loop: arrived while the in-flight cap was reached; never sent
    UNFINISHED = "unfinished"  # still running at Ctrl-C or after the drain timeout


class Phase(StrEnum):
    WARMUP = "warmup"  # excluded from the statistics, kept in the file
    MEASURED = "measured"


@dataclass(frozen=True)
class Sample:
    """One request. Times are seconds; ``start_s``/``end_s`` count from the run's start.

    ``queue_s`` (queue mode) is from the submit's answer to the first status event that is not
    ``IN_QUEUE`` (``IN_PROGRESS`` or ``COMPLETED``), as fal-client's status events report it, so
    its resolution is the client's poll interval. ``run_s`` is from that event to ``COMPLETED``.
    ``retries`` counts the attempts fal-client repeated on its own (transport errors, 408, 409,
    429, ingress 5xx); the load test itself never retries.
    """

    index: int
    phase: Phase
    outcome: Outcome
    mix: str
    endpoint: str
    start_s: float
    end_s: float | None = None
    scheduled_s: float | None = None  # open loop: when it was due to arrive
    latency_s: float | None = None  # end to end, as the caller of fal-client sees it
    submit_s: float | None = None  # queue mode: the submit call
    queue_s: float | None = None
    run_s: float | None = None
    request_id: str | None = None
    server_timings: dict[str, float] = field(default_factory=dict)  # the output's `timings`
    server_metrics: dict[str, Any] = field(default_factory=dict)  # queue COMPLETED `metrics`
    images: int = 0  # output images
    request_bytes: int = 0  # the JSON input
    response_bytes: int = 0  # the JSON output
    image_bytes: int = 0  # sum of the output images' `file_size`, where given
    retries: int = 0
    error_type: str | None = None
    error: str | None = None

    @property
    def measured(self) -> bool:
        return self.phase is Phase.MEASURED

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["outcome"] = self.outcome.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["phase"] = Phase(values["phase"])
        values["outcome"] = Outcome(values["outcome"])
        return cls(**values)
