"""Two result files side by side (for example self-hosted vs hosted): values and ratios.

The ratio is the second file's value over the first's (``B/A``): for latencies below 1 means B
is faster, for throughput above 1 means B serves more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.loadtest.results import LoadedResult

#: (label, path into the summary, unit)
METRICS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("latency p50", ("latency_s", "p50"), "s"),
    ("latency p90", ("latency_s", "p90"), "s"),
    ("latency p95", ("latency_s", "p95"), "s"),
    ("latency p99", ("latency_s", "p99"), "s"),
    ("latency max", ("latency_s", "max"), "s"),
    ("latency mean", ("latency_s", "mean"), "s"),
    ("time in queue p50", ("queue_s", "p50"), "s"),
    ("time in queue p95", ("queue_s", "p95"), "s"),
    ("server inference p50", ("server_timings_s", "inference", "p50"), "s"),
    ("throughput", ("requests_per_s",), "req/s"),
    ("images", ("images_per_s",), "img/s"),
    ("error rate", ("error_rate",), ""),
    ("requests ok", ("ok",), ""),
    ("retries", ("retries",), ""),
)
#: Settings that should match for the comparison to be fair; differences are pointed out.
SETTINGS = ("mode", "loop", "concurrency", "rate", "arrival", "mix", "image_size", "endpoint")


@dataclass(frozen=True)
class Row:
    metric: str
    unit: str
    a: float | None
    b: float | None

    @property
    def ratio(self) -> float | None:
        """``b / a``; None when either is missing or ``a`` is zero."""
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a


def _lookup(summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = summary
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def compare(a: LoadedResult, b: LoadedResult) -> list[Row]:
    """One row per metric that at least one of the two files has."""
    rows = [
        Row(label, unit, _lookup(a.summary, path), _lookup(b.summary, path))
        for label, path, unit in METRICS
    ]
    return [row for row in rows if row.a is not None or row.b is not None]


def setting_differences(a: LoadedResult, b: LoadedResult) -> list[str]:
    found = []
    for key in SETTINGS:
        left = a.document.get("settings", {}).get(key)
        right = b.document.get("settings", {}).get(key)
        if left != right:
            found.append(f"{key}: {left} vs {right}")
    return found


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) >= 1:
        return f"{value:.0f}"
    return f"{value:.4g}"


def render(a: LoadedResult, b: LoadedResult) -> str:
    """The comparison as a plain-text table."""
    rows = compare(a, b)
    head_a, head_b = f"A: {a.label}", f"B: {b.label}"
    width = max(len(f"{r.metric} ({r.unit})") for r in rows) if rows else 10
    col_a, col_b = max(12, len(head_a)), max(12, len(head_b))
    lines = [f"{'':<{width}}  {head_a:>{col_a}}  {head_b:>{col_b}}  {'B/A':>8}"]
    for row in rows:
        name = f"{row.metric} ({row.unit})" if row.unit else row.metric
        ratio = "-" if row.ratio is None else f"x{row.ratio:.2f}"
        lines.append(
            f"{name:<{width}}  {_number(row.a):>{col_a}}  {_number(row.b):>{col_b}}  {ratio:>8}"
        )
    differences = setting_differences(a, b)
    if differences:
        lines.append("")
        lines.append("settings differ (compare like with like): " + "; ".join(differences))
    lines.append("")
    lines.append(f"A = {a.path}, B = {b.path}")
    return "\n".join(lines)
