"""How much load, for how long: the :class:`Plan` of a run and the caps it cannot exceed.

The caps hold whatever the options say: at most :data:`MAX_REQUESTS` requests,
:data:`MAX_DURATION_S` seconds of sending, :data:`MAX_CONCURRENCY` requests in flight and
:data:`MAX_RATE` arrivals per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

MAX_REQUESTS = 10_000
MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 100  # also httpx's default connection pool: the client never queues itself
MAX_RATE = 200.0
MAX_WARMUP = 100
DEFAULT_REQUESTS = 20  # when neither --requests nor --duration is given
#: An open-loop request sent this much after it was due counts as late.
LATE_AFTER_S = 0.05


class Loop(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class Arrival(StrEnum):
    POISSON = "poisson"
    UNIFORM = "uniform"


@dataclass(frozen=True)
class Plan:
    """How much load, for how long. Raises ValueError beyond the caps."""

    loop: Loop = Loop.CLOSED
    concurrency: int = 1  # closed loop: workers; open loop: most requests in flight
    rate: float | None = None  # open loop: arrivals per second
    arrival: Arrival = Arrival.POISSON
    requests: int | None = None
    duration_s: float | None = None
    warmup: int = 1
    drain_timeout_s: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.concurrency <= MAX_CONCURRENCY, f"concurrency must be 1..{MAX_CONCURRENCY}"),
            (
                self.requests is None or 1 <= self.requests <= MAX_REQUESTS,
                f"requests must be 1..{MAX_REQUESTS}",
            ),
            (
                self.duration_s is None or 0 < self.duration_s <= MAX_DURATION_S,
                f"duration must be over 0 and at most {MAX_DURATION_S:.0f} s",
            ),
            (0 <= self.warmup <= MAX_WARMUP, f"warmup must be 0..{MAX_WARMUP}"),
            (0 <= self.drain_timeout_s <= MAX_DURATION_S, "drain timeout out of range"),
            (
                (self.loop is Loop.OPEN) == (self.rate is not None),
                "an open loop needs a rate (and a closed loop takes none)",
            ),
            (self.rate is None or 0 < self.rate <= MAX_RATE, f"rate must be over 0, <= {MAX_RATE}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def max_requests(self) -> int:
        if self.requests is not None:
            return self.requests
        return MAX_REQUESTS if self.duration_s is not None else DEFAULT_REQUESTS

    @property
    def max_duration_s(self) -> float:
        return self.duration_s if self.duration_s is not None else MAX_DURATION_S
