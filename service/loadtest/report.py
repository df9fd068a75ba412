"""A self-contained HTML report of one result file: no scripts, no external files.

It shows the latency of every measured request over time (an inline SVG scatter, errors in red,
with the p50/p95/p99 lines), the latency histogram, the percentile table (end-to-end latency,
time in queue, the server's own timings), throughput, errors by type, and the settings, target
and machine the run recorded.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from service.loadtest.results import LoadedResult
from service.loadtest.sample import Outcome, Sample

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 900, 320, 64, 20, 16, 44
LINES = (("p50", "#2a9d8f"), ("p95", "#e9c46a"), ("p99", "#e76f51"))
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f4; }
svg { background: #fcfcfc; border: 1px solid #e4e4e4; }
.axis text, .line text { font-size: 11px; fill: #555; }
.axis line, .axis path { stroke: #999; }
.ok { fill: #264653; fill-opacity: 0.7; } .error { fill: #d62828; }
.bar { fill: #457b9d; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``low..high``."""
    span = max(high - low, 1e-9)
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= step * m)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 2)]


def _axes(
    x_ticks: list[float], y_ticks: list[float], sx: Any, sy: Any, labels: tuple[str, str]
) -> str:
    parts = ['<g class="axis">']
    bottom, right = HEIGHT - PAD_B, WIDTH - PAD_R
    parts.append(f'<path d="M{PAD_L},{PAD_T} V{bottom} H{right}" fill="none"/>')
    for x in x_ticks:
        px = sx(x)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{bottom}" y2="{bottom + 4}"/>')
        parts.append(f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{x:g}</text>')
    for y in y_ticks:
        py = sy(y)
        parts.append(f'<line x1="{PAD_L - 4}" x2="{PAD_L}" y1="{py:.1f}" y2="{py:.1f}"/>')
        parts.append(f'<text x="{PAD_L - 7}" y="{py + 4:.1f}" text-anchor="end">{y:g}</text>')
    parts.append(
        f'<text x="{(PAD_L + right) / 2}" y="{HEIGHT - 6}" text-anchor="middle">{labels[0]}</text>'
    )
    parts.append(
        f'<text transform="translate(14,{(PAD_T + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{labels[1]}</text></g>'
    )
    return "".join(parts)


def _scale(low: float, high: float, out_low: float, out_high: float) -> Any:
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def latency_chart(samples: list[Sample], start_s: float, summary: dict[str, Any]) -> str:
    """Latency of each measured request against when it started."""
    points = [
        (s.start_s - start_s, s.latency_s, s.outcome)
        for s in samples
        if s.measured and s.latency_s is not None
    ]
    x_max = max((x for x, _, _ in points), default=1.0) or 1.0
    y_max = max((y for _, y, _ in points), default=1.0) or 1.0
    x_ticks, y_ticks = _ticks(0, x_max), _ticks(0, y_max)
    sx = _scale(0, x_ticks[-1], PAD_L, WIDTH - PAD_R)
    sy = _scale(0, y_ticks[-1], HEIGHT - PAD_B, PAD_T)
    parts = [
        f'<svg id="latency-over-time" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        "<title>End-to-end latency of each request over the run</title>",
        _axes(x_ticks, y_ticks, sx, sy, ("request start (s)", "latency (s)")),
    ]
    for k, (name, colour) in enumerate(LINES):
        value = summary["latency_s"].get(name)
        if value is not None:
            py, label_x = sy(value), WIDTH - PAD_R - 4 - 120 * k  # labels side by side
            parts.append(
                f'<g class="line"><line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{py:.1f}" '
                f'y2="{py:.1f}" stroke="{colour}" stroke-dasharray="5,4"/>'
                f'<text x="{label_x}" y="{py - 4:.1f}" text-anchor="end">'
                f"{name} {value:.3f} s</text></g>"
            )
    parts.append(
        f'<g class="line"><circle class="key ok" cx="{PAD_L + 12}" cy="{PAD_T + 8}" r="3.5"/>'
        f'<text x="{PAD_L + 20}" y="{PAD_T + 12}">ok</text>'
        f'<circle class="key error" cx="{PAD_L + 48}" cy="{PAD_T + 8}" r="3.5"/>'
        f'<text x="{PAD_L + 56}" y="{PAD_T + 12}">error</text></g>'
    )
    for x, y, outcome in points:
        kind = "ok" if outcome is Outcome.OK else "error"
        parts.append(
            f'<circle class="sample {kind}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5">'
            f"<title>{x:.2f} s: {y:.3f} s ({kind})</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def histogram(samples: list[Sample], bins: int = 24) -> str:
    """How many successful requests took how long."""
    values = [
        s.latency_s
        for s in samples
        if s.measured and s.outcome is Outcome.OK and s.latency_s is not None
    ]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(int((value - low) / width), bins - 1)] += 1
    x_ticks, y_ticks = _ticks(low, low + width * bins), _ticks(0, max(counts, default=1) or 1)
    sx = _scale(x_ticks[0], x_ticks[-1], PAD_L, WIDTH - PAD_R)
    sy = _scale(0, y_ticks[-1], HEIGHT - PAD_B, PAD_T)
    parts = [
        f'<svg id="latency-histogram" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        "<title>Latency histogram of the successful requests</title>",
        _axes(x_ticks, y_ticks, sx, sy, ("latency (s)", "requests")),
    ]
    for k, count in enumerate(counts):
        if count:
            x0, x1 = sx(low + k * width), sx(low + (k + 1) * width)
            parts.append(
                f'<rect class="bar" x="{x0:.1f}" y="{sy(count):.1f}" '
                f'width="{max(x1 - x0 - 1, 1):.1f}" height="{sy(0) - sy(count):.1f}">'
                f"<title>{count}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def percentile_table(summary: dict[str, Any]) -> str:
    columns = ["n", "mean", "min", "p50", "p90", "p95", "p99", "max"]
    rows = [("end-to-end latency", summary["latency_s"])]
    if summary["queue_s"]["n"]:
        rows.append(("time in queue", summary["queue_s"]))
    rows += [(f"server timings.{k}", v) for k, v in summary["server_timings_s"].items()]
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        f"<tr><td>{escape(name)} (s)</td>"
        + "".join(f"<td>{_fmt(dist.get(c))}</td>" for c in columns)
        + "</tr>"
        for name, dist in rows
    )
    return (
        f'<table id="percentiles"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _key_values(table_id: str, items: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in items)
    return f'<table id="{table_id}"><tbody>{body}</tbody></table>'


def render(result: LoadedResult) -> str:
    """The whole report as one HTML page."""
    doc, summary = result.document, result.summary
    target, settings = doc.get("target", {}), doc.get("settings", {})
    throughput = [
        ("requests (measured)", summary["requests"]),
        ("ok", summary["ok"]),
        ("errors", summary["errors"]),
        ("error rate", summary["error_rate"]),
        ("dropped (open loop, in-flight cap)", summary["dropped"]),
        ("late arrivals (open loop)", summary["late"]),
        ("unfinished", summary["unfinished"]),
        ("retries by fal-client", summary["retries"]),
        ("measured window (s)", summary["window_s"]),
        ("throughput (requests/s)", summary["requests_per_s"]),
        ("throughput (images/s)", summary["images_per_s"]),
        ("mean request bytes", summary["request_bytes_mean"]),
        ("mean response bytes", summary["response_bytes_mean"]),
        ("mean output image bytes", summary["image_bytes_mean"]),
    ]
    errors = [(k, v) for k, v in summary["errors_by_type"].items()] or [("none", 0)]
    subtitle = (
        f"{escape(str(target.get('url', '?')))} · {escape(str(settings.get('mode')))} "
        f"mode · {escape(str(settings.get('loop')))} loop · started "
        f"{escape(str(doc.get('started_at')))} · stopped by "
        f"{escape(str(doc.get('stop_reason')))}"
    )
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>Load test: {escape(result.label)}</title><style>{CSS}</style></head><body>",
            f"<h1>Load test: {escape(result.label)}</h1>",
            f'<p class="sub">{subtitle}</p>',
            "<h2>Latency over the run</h2>",
            latency_chart(result.samples, float(doc.get("measured_start_s", 0.0)), summary),
            "<h2>Percentiles</h2>",
            percentile_table(summary),
            "<h2>Throughput and errors</h2>",
            _key_values("throughput", throughput),
            "<h3>Errors by type</h3>",
            _key_values("errors", errors),
            "<h2>Latency histogram</h2>",
            histogram(result.samples),
            "<h2>Settings, target and machine</h2>",
            f"<pre>{escape(json.dumps({k: doc.get(k) for k in ('target', 'settings', 'machine', 'versions')}, indent=1))}</pre>",  # noqa: E501
            "</body></html>",
        ]
    )
