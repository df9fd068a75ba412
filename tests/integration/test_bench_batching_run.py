"""The batching benchmark end to end with tiny settings: the slowest of the benchmark runs, in a
file of its own so ``make test``'s workers run it beside the others (see test_benchmarks_run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_benchmarks_run import bench

pytestmark = pytest.mark.slow


def test_batching(tmp_path: Path) -> None:
    line, report = bench(
        "bench_batching",
        tmp_path / "batching.json",
        *("--per-client-1", "1", "--per-client-4", "1", "--per-client-16", "1"),
        *("--rounds", "1", "--engine-repeats", "1"),
    )
    combined = {(r["batching"], r["concurrency"]): r for r in report["combined"]}
    assert set(combined) == {(mode, c) for mode in ("on", "off") for c in (1, 4, 16)}
    assert all(r["errors"] == 0 and r["requests"] == r["concurrency"] for r in combined.values())
    off = [r for r in report["results"] if r["batching"] == "off"]
    assert all(r["jobs_by_batch_size"] == {"1": r["requests"]} for r in off)  # never batched
    assert report["engine_alone"]["batch4_s_per_image"] > 0
    assert "c=16: on" in line
