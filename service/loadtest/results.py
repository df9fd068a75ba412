"""The result file: every sample, plus the machine, the target and the settings of the run.

Its ``summary`` is computed from the samples (:func:`service.loadtest.stats.summarize`);
readers recompute it from the samples too, so a hand-edited or older file cannot disagree with
itself.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from service.loadtest.runner import RunResult
from service.loadtest.sample import Sample
from service.loadtest.stats import summarize

FORMAT = "flux2-edit-loadtest/1"


@dataclass(frozen=True)
class LoadedResult:
    """A result file, read back."""

    path: Path
    label: str
    document: dict[str, Any]
    samples: list[Sample]
    summary: dict[str, Any]


def machine_info() -> dict[str, Any]:
    """Where the client ran (the load test measures from here)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1_5_15": load,
    }


def versions() -> dict[str, str]:
    found = {}
    for name in ("flux2-edit", "fal-client", "httpx"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def build_document(
    result: RunResult,
    *,
    label: str,
    target: dict[str, Any],
    settings: dict[str, Any],
    started_at: datetime,
) -> dict[str, Any]:
    window = result.measured_end_s - result.measured_start_s
    return {
        "format": FORMAT,
        "label": label,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "target": target,
        "settings": settings,
        "machine": machine_info(),
        "versions": versions(),
        "stop_reason": result.stop_reason,
        "interrupted": result.interrupted,
        "measured_start_s": result.measured_start_s,
        "measured_end_s": result.measured_end_s,
        "summary": summarize(result.samples, window),
        "samples": [sample.to_json() for sample in result.samples],
    }


def write_document(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def load(path: Path) -> LoadedResult:
    """Read a result file; ValueError if it is not one."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a load-test result ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} result file")
    try:
        samples = [Sample.from_json(item) for item in document["samples"]]
        window = float(document["measured_end_s"]) - float(document["measured_start_s"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed result file ({exc})") from None
    return LoadedResult(
        path=path,
        label=str(document.get("label") or path.stem),
        document=document,
        samples=samples,
        summary=summarize(samples, window),
    )
