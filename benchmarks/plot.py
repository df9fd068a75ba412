"""One SVG figure of the recorded benchmark results (no plotting library needed).

Usage::

    .venv/bin/python -m benchmarks.plot          # reads results/*.json, writes results/summary.svg

Three panels, each drawn from the JSON a benchmark wrote (a missing file leaves its panel out):

* service overhead (``service.json``): p50 seconds per edit at 512² and 1024² for the direct
  engine call, the sync route and the HTTP queue;
* batching (``batching.json``): throughput in images per second at concurrency 1, 4 and 16, with
  batching on and off (pooled over the rounds);
* prompt cache (``prompt-cache.json``): p50 seconds per edit with the cache off, cold and warm.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, summary_line

NAME = "plot"
COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2")
PANEL_WIDTH, PANEL_HEIGHT = 420, 300
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 56, 56, 40


@dataclass(frozen=True)
class Panel:
    """A grouped bar chart: one group per label, one bar per series in each group."""

    title: str
    unit: str
    groups: Sequence[str]
    series: Mapping[str, Sequence[float]]


def service_panel(report: Mapping[str, Any]) -> Panel:
    paths = ("engine", "sync", "queue")
    rows = [r for r in report["results"] if r.get("safety_checker", "none") == "none"]
    sizes = sorted({int(r["size"]) for r in rows})
    p50 = {(int(r["size"]), r["path"]): float(r["p50_s"]) for r in rows}
    return Panel(
        title="Service overhead: p50 per edit (tiny model, CPU)",
        unit="s",
        groups=[f"{size}²" for size in sizes],
        series={path: [p50.get((size, path), 0.0) for size in sizes] for path in paths},
    )


def batching_panel(report: Mapping[str, Any]) -> Panel:
    rows = report.get("combined") or report["results"]
    levels = sorted({int(r["concurrency"]) for r in rows})
    rate = {
        (r["batching"], int(r["concurrency"])): float(r["throughput_images_per_s"]) for r in rows
    }
    return Panel(
        title="Batching: throughput (512², tiny model, CPU)",
        unit="img/s",
        groups=[f"c={level}" for level in levels],
        series={
            f"batching {mode}": [rate.get((mode, level), 0.0) for level in levels]
            for mode in ("on", "off")
        },
    )


def prompt_cache_panel(report: Mapping[str, Any]) -> Panel:
    cases = [r for r in report["results"] if "case" in r]
    return Panel(
        title="Prompt cache: p50 per edit (512², tiny model, CPU)",
        unit="s",
        groups=[str(r["case"]) for r in cases],
        series={"p50": [float(r["p50_s"]) for r in cases]},
    )


PANELS = (
    ("service.json", service_panel),
    ("batching.json", batching_panel),
    ("prompt-cache.json", prompt_cache_panel),
)


def _nice_top(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``value`` (the axis top)."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    return next(step * scale for step in (1, 2, 5, 10) if value <= step * scale * (1 + 1e-9))


def _ticks(top: float) -> int:
    """Grid intervals that give round labels: 5 for a top of 1 or 5 (x 10^k), 4 for 2."""
    leading = round(top / 10.0 ** math.floor(math.log10(top)))
    return 4 if leading == 2 else 5


def _text(x: float, y: float, content: str, size: int = 11, anchor: str = "middle") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">'
        f"{escape(content)}</text>"
    )


def render_panel(panel: Panel, left: float, top: float) -> list[str]:
    """SVG elements of ``panel`` drawn in the box at (``left``, ``top``)."""
    plot_w = PANEL_WIDTH - MARGIN_LEFT - 16
    plot_h = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    x0, y0 = left + MARGIN_LEFT, top + MARGIN_TOP + plot_h  # the axes' origin
    values = [v for column in panel.series.values() for v in column]
    y_top = _nice_top(max(values, default=0.0))
    parts = [_text(left + PANEL_WIDTH / 2, top + 20, panel.title, size=13)]
    ticks = _ticks(y_top)
    for k in range(ticks + 1):  # horizontal grid lines and their labels
        value = y_top * k / ticks
        y = y0 - plot_h * k / ticks
        parts.append(
            f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(_text(x0 - 6, y + 4, f"{value:g}", size=10, anchor="end"))
    parts.append(_text(left + 14, top + MARGIN_TOP - 8, panel.unit, size=10, anchor="start"))
    names = list(panel.series)
    group_w = plot_w / max(len(panel.groups), 1)
    bar_w = group_w * 0.8 / max(len(names), 1)
    for g, group in enumerate(panel.groups):
        gx = x0 + g * group_w + group_w * 0.1
        for s, name in enumerate(names):
            value = panel.series[name][g]
            height = plot_h * value / y_top
            x, y = gx + s * bar_w, y0 - height
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w * 0.92:.1f}" '
                f'height="{height:.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                f"<title>{escape(f'{group} {name}: {value:g} {panel.unit}')}</title></rect>"
            )
            parts.append(_text(x + bar_w * 0.46, y - 3, f"{value:.2f}", size=9))
        parts.append(_text(x0 + (g + 0.5) * group_w, y0 + 16, group))
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + plot_w}" y2="{y0}" stroke="#333"/>')
    for s, name in enumerate(names):  # legend under the axis
        lx = x0 + s * (plot_w / max(len(names), 1))
        parts.append(
            f'<rect x="{lx:.1f}" y="{y0 + 30}" width="10" height="10" '
            f'fill="{COLOURS[s % len(COLOURS)]}"/>'
        )
        parts.append(_text(lx + 14, y0 + 39, name, size=10, anchor="start"))
    return parts


def render(panels: Sequence[Panel], note: str = "") -> str:
    """The whole figure: the panels side by side, ``note`` underneath."""
    width = PANEL_WIDTH * max(len(panels), 1)
    height = PANEL_HEIGHT + (24 if note else 0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for index, panel in enumerate(panels):
        parts += render_panel(panel, index * PANEL_WIDTH, 0)
    if note:
        parts.append(_text(8, height - 8, note, size=10, anchor="start"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def load_panels(results: Path) -> tuple[list[Panel], list[str]]:
    """The panels whose JSON exists in ``results``, and the git shas they were recorded at."""
    panels, shas = [], []
    for filename, make in PANELS:
        path = results / filename
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        panels.append(make(report))
        shas.append(str(report.get("git", {}).get("sha", "?")))
    return panels, shas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS/summary.svg")
    args = parser.parse_args(argv)
    panels, shas = load_panels(args.results)
    out = args.out or args.results / "summary.svg"
    note = f"recorded at git {', '.join(sorted(set(shas)))}; raw numbers in results/*.json"
    out.write_text(render(panels, note if shas else ""))
    summary_line(NAME, f"{len(panels)} panels -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
