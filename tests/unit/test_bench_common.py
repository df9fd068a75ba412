"""The benchmark helpers (benchmarks/common.py, run_all's summary handling): no torch, no server."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from benchmarks.common import (
    LoadMonitor,
    free_port,
    git_info,
    percentile,
    run_record,
    summarize,
    summary_line,
    write_csv,
    write_json,
)
from benchmarks.run_all import Outcome, record_outcomes, status_of, summary_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0], 95, 3.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # even count: the mean of the middle two
        ([4.0, 1.0, 3.0, 2.0], 0, 1.0),  # order does not matter
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([float(v) for v in range(1, 21)], 95, 19.05),  # numpy's default 'linear'
    ],
)
def test_percentile_interpolates_linearly(values: list[float], q: float, expected: float) -> None:
    assert math.isclose(percentile(values, q), expected)


def test_percentile_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_summarize() -> None:
    stats = summarize([0.1, 0.2, 0.3, 0.4, 1.0])
    assert stats == {"n": 5, "p50": 0.3, "p95": 0.88, "mean": 0.4, "min": 0.1, "max": 1.0}


def test_write_csv_takes_every_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "out" / "r.csv", [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "", "c": "4"}]


def test_write_json_round_trips(tmp_path: Path) -> None:
    path = write_json(tmp_path / "r.json", {"x": [1, 2.5], "ok": True})
    assert json.loads(path.read_text()) == {"x": [1, 2.5], "ok": True}


def test_summary_line_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    line = summary_line("bench_x", "p50 1.0 s\n  p95   2.0 s")
    assert line == "bench_x: p50 1.0 s p95 2.0 s"
    assert capsys.readouterr().out == line + "\n"


def test_run_record_says_what_ran_where() -> None:
    record = run_record("bench_x", ("pytest", "surely-not-installed-pkg"))
    assert record["script"] == "bench_x"
    assert set(record["git"]) == {"sha", "dirty"}
    assert record["machine"]["cpu_count"] >= 1
    assert record["versions"]["surely-not-installed-pkg"] == "not installed"
    assert record["versions"]["pytest"][0].isdigit()
    assert git_info(ROOT)["sha"] != ""


def test_load_monitor_samples() -> None:
    with LoadMonitor(interval=0.01) as monitor:
        pass
    report = monitor.report()
    assert report["samples"] >= 1
    assert report["max"] >= report["mean"] >= 0


def test_free_port() -> None:
    assert 0 < free_port() < 65536


@pytest.mark.parametrize(
    ("stdout", "code", "summary", "status"),
    [
        ("noise\nbench_x: 1.0 s\n", 0, "bench_x: 1.0 s", "ok"),
        ("bench_x: skipped: no CUDA device\n", 0, "bench_x: skipped: no CUDA device", "skipped"),
        (
            "Traceback\nValueError: boom\n",
            1,
            "bench_x: failed with exit code 1 (ValueError: boom)",
            "failed",
        ),
        ("bench_x: 2 errors\n", 1, "bench_x: 2 errors", "failed"),
        ("", 0, "bench_x: finished without a summary line", "ok"),
    ],
)
def test_run_all_reads_summaries(stdout: str, code: int, summary: str, status: str) -> None:
    assert summary_of("bench_x", stdout, code) == summary
    assert status_of("bench_x", summary, code) == status


def test_run_all_keeps_the_outcomes_of_scripts_that_did_not_run(tmp_path: Path) -> None:
    path = tmp_path / "run_all.json"
    record_outcomes(
        path,
        [
            Outcome("bench_gpu", "skipped", 0, 1.0, "bench_gpu: skipped: no CUDA device"),
            Outcome("bench_service", "ok", 0, 9.0, "bench_service: old"),
        ],
    )
    report = record_outcomes(path, [Outcome("bench_service", "ok", 0, 8.0, "bench_service: new")])
    assert [o["name"] for o in report["outcomes"]] == [
        "bench_service",
        "bench_gpu",
    ]  # SCRIPTS order
    assert report["outcomes"][0]["summary"] == "bench_service: new"
    assert report["outcomes"][1]["status"] == "skipped"
    assert all(o["git"]["sha"] for o in report["outcomes"])
    assert json.loads(path.read_text()) == report


def test_run_all_starts_again_from_an_unreadable_record(tmp_path: Path) -> None:
    path = tmp_path / "run_all.json"
    path.write_text("{not json")
    report = record_outcomes(path, [Outcome("bench_gpu", "ok", 0, 1.0, "bench_gpu: fine")])
    assert [o["name"] for o in report["outcomes"]] == ["bench_gpu"]


def test_rewritten_results_do_not_make_the_tree_dirty(tmp_path: Path) -> None:
    """A ``make bench`` run rewrites the tracked results as it goes; only other changes count."""
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "service.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    assert git_info(tmp_path)["dirty"] is False
    (results / "service.json").write_text('{"new": 1}')
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_info(tmp_path)["dirty"] is True
