"""Run the benchmarks in order (``make bench``), each in its own process.

Usage::

    .venv/bin/python -m benchmarks.run_all [--only NAME ...] [--skip NAME ...]

Each script's progress goes to the terminal as it runs; its last stdout line is its one-line
summary. A failing script does not stop the others. At the end the summaries are printed
together and written to ``results/run_all.json``, and ``results/summary.svg`` is redrawn from the
recorded JSON (:mod:`benchmarks.plot`); the exit status is 1 if any script failed.
The GPU benchmark skipping itself on a machine without CUDA (exit 0, ``skipped: …``) is not a
failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import plot
from benchmarks.common import REPO_ROOT, RESULTS_DIR, git_info, write_json

SCRIPTS = (
    "bench_service",
    "bench_batching",
    "bench_prompt_cache",
    "bench_family",
    "bench_api_load",
    "bench_gpu",
)


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # ok, skipped, failed
    exit_code: int
    seconds: float
    summary: str


def summary_of(name: str, stdout: str, exit_code: int) -> str:
    """The script's own ``name: …`` line (the last one), else a line that says what happened."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith(f"{name}:")]
    if own:
        return own[-1]
    if exit_code != 0:
        return f"{name}: failed with exit code {exit_code}" + (f" ({lines[-1]})" if lines else "")
    return f"{name}: finished without a summary line"


def status_of(name: str, summary: str, exit_code: int) -> str:
    if exit_code != 0:
        return "failed"
    return "skipped" if summary.startswith(f"{name}: skipped") else "ok"


def run_one(name: str, timeout: float) -> Outcome:
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=None,  # progress streams straight to the terminal
            text=True,
            timeout=timeout,
            check=False,
        )
        exit_code, stdout = done.returncode, done.stdout
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout
        stdout = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        exit_code, stdout = 124, stdout + f"\n{name}: timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    for line in stdout.splitlines():  # echo what the script printed
        print(line, flush=True)
    summary = summary_of(name, stdout, exit_code)
    return Outcome(name, status_of(name, summary, exit_code), exit_code, round(seconds, 1), summary)


def record_outcomes(
    path: Path, outcomes: list[Outcome], git: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write this run's outcomes into ``path``, keeping earlier ones of scripts that did not run
    now (``--only``/``--skip``), each with the git commit it ran at (``git``: taken when the run
    started; default now), in ``SCRIPTS`` order."""
    kept: dict[str, dict[str, Any]] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            # Records written before outcomes had their own commit share the file's.
            kept = {o["name"]: {"git": old.get("git"), **o} for o in old.get("outcomes", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            kept = {}  # unreadable: start again
    git = git if git is not None else git_info()
    for outcome in outcomes:
        kept[outcome.name] = {**asdict(outcome), "git": git}
    ordered = [kept[name] for name in SCRIPTS if name in kept]
    report = {"outcomes": ordered}
    write_json(path, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, help="run just these")
    parser.add_argument("--skip", nargs="+", choices=SCRIPTS, default=[], help="leave these out")
    parser.add_argument("--timeout", type=float, default=3600, help="per script, seconds")
    args = parser.parse_args(argv)
    names = [n for n in (args.only or SCRIPTS) if n not in args.skip]
    started_at = git_info()  # what ran: before the scripts rewrite the results
    outcomes = [run_one(name, args.timeout) for name in names]
    print("== summaries", flush=True)
    for outcome in outcomes:
        print(f"[{outcome.status}] {outcome.summary}", flush=True)
    record_outcomes(RESULTS_DIR / "run_all.json", outcomes, started_at)
    plot.main(["--results", str(RESULTS_DIR)])
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
