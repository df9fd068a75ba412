"""Percentiles and the summary of a run, from its samples alone (warm-up excluded).

Percentiles interpolate linearly between closest ranks (numpy's default ``linear`` method; the
benchmarks use this function too): p50 of an even count is the mean of the two middle
values. Throughput is successful requests (and their output images) per second of the measured
window, from the start of the measured phase to the last measured completion. The error rate is
errors over answered requests (successes plus errors); dropped and unfinished requests are
counted apart.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from service.loadtest.plan import LATE_AFTER_S
from service.loadtest.sample import Outcome, Sample

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolating linearly between ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, min, p50, p90, p95, p99 and max (None for no values)."""
    stats: dict[str, float | int | None] = {"n": len(values)}
    if not values:
        return stats | dict.fromkeys(["mean", "min", *_pkeys(), "max"])
    stats["mean"] = math.fsum(values) / len(values)
    stats["min"] = min(values)
    for q in PERCENTILES:
        stats[f"p{q}"] = percentile(values, q)
    stats["max"] = max(values)
    return stats


def _pkeys() -> list[str]:
    return [f"p{q}" for q in PERCENTILES]


def summarize(samples: Iterable[Sample], window_s: float) -> dict[str, Any]:
    """The summary of the measured samples over a window of ``window_s`` seconds."""
    measured = [s for s in samples if s.measured]
    ok = [s for s in measured if s.outcome is Outcome.OK]
    errors = [s for s in measured if s.outcome is Outcome.ERROR]
    answered = len(ok) + len(errors)
    lags = [
        s.start_s - s.scheduled_s
        for s in measured
        if s.scheduled_s is not None and s.outcome is not Outcome.DROPPED
    ]
    timing_keys = sorted({k for s in ok for k in s.server_timings})
    images = sum(s.images for s in ok)
    return {
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(errors),
        "dropped": sum(s.outcome is Outcome.DROPPED for s in measured),
        "unfinished": sum(s.outcome is Outcome.UNFINISHED for s in measured),
        "late": sum(lag > LATE_AFTER_S for lag in lags),
        "error_rate": len(errors) / answered if answered else None,
        "errors_by_type": dict(Counter(s.error_type or "unknown" for s in errors).most_common()),
        "retries": sum(s.retries for s in measured),
        "requests_retried": sum(s.retries > 0 for s in measured),
        "window_s": window_s,
        "requests_per_s": len(ok) / window_s if window_s > 0 else None,
        "images": images,
        "images_per_s": images / window_s if window_s > 0 else None,
        "latency_s": distribution([s.latency_s for s in ok if s.latency_s is not None]),
        "queue_s": distribution([s.queue_s for s in ok if s.queue_s is not None]),
        "server_timings_s": {
            key: distribution([s.server_timings[key] for s in ok if key in s.server_timings])
            for key in timing_keys
        },
        "start_lag_s": distribution(lags),
        "request_bytes_mean": _mean([s.request_bytes for s in ok]),
        "response_bytes_mean": _mean([s.response_bytes for s in ok]),
        "image_bytes_mean": _mean([s.image_bytes for s in ok]),
    }


def _mean(values: Sequence[int]) -> float | None:
    return math.fsum(values) / len(values) if values else None
