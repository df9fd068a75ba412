"""The CPU benchmarks of ``make bench`` run end to end with tiny settings (numbers not checked:
they belong in ``benchmarks/results``; what is checked is that each script works and records
what RESULTS.md reads)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def bench(name: str, out: Path, *args: str) -> tuple[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--wait-quiet", "0", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [line for line in done.stdout.splitlines() if line.strip()]  # only the summary
    assert line.startswith(f"{name}: ")
    report = json.loads(out.read_text())
    assert report["script"] == name
    assert report["git"]["sha"] and report["machine"]["cpu_count"]
    assert out.with_suffix(".csv").is_file()
    return line, report


def test_service_overhead(tmp_path: Path) -> None:
    line, report = bench(
        "bench_service",
        tmp_path / "service.json",
        *("--sizes", "512", "--repeats-512", "2", "--nsfw-repeats", "1"),
    )
    rows = {(r["safety_checker"], r["path"]): r for r in report["results"]}
    assert set(rows) == {
        ("none", "queue"),
        ("none", "queue_poll100ms"),
        ("none", "sync"),
        ("none", "engine"),
        ("opennsfw", "queue"),
    }
    queue = rows[("none", "queue")]
    assert queue["n"] == 2
    assert queue["first_request_s"] > 0  # the first edit after /ready, kept apart
    assert queue["p50_s"] > queue["engine_inference_p50_s"] > 0  # the server's engine time
    assert queue["ratio_vs_engine"] == pytest.approx(
        queue["p50_s"] / rows[("none", "engine")]["p50_s"], rel=1e-3
    )
    assert "512² none: queue p50" in line


def test_prompt_cache(tmp_path: Path) -> None:
    line, report = bench("bench_prompt_cache", tmp_path / "cache.json", "--repeats", "2")
    cases = {r["case"]: r for r in report["results"]}
    assert set(cases) == {"off", "cold", "warm"}
    assert cases["warm"]["text_encoder_p50_s"] == 0  # served from the cache
    assert cases["cold"]["text_encoder_p50_s"] > 0
    assert report["real_model_estimate"]["estimate"] is True
    assert "warm" in line


def test_api_load(tmp_path: Path) -> None:
    line, report = bench(
        "bench_api_load",
        tmp_path / "api-load.json",
        *("--clients", "10", "--idle-seconds", "1", "--soak-jobs", "3", "--soak-concurrency", "2"),
    )
    [row] = report["results"]
    assert report["waiting"]["waiting_clients"] == 10
    assert report["waiting"]["sync_runs"] == report["waiting"]["status_streams"] == 5
    assert row["redis_commands_per_second"] >= 0
    assert report["completion_to_response_ms"]["n"] == 5  # every sync run answered
    assert row["soak_jobs"] == 3 and row["soak_failures"] == 0
    assert row["api_open_fds_after"] > 0 and row["worker_rss_mb_after"] > 0
    assert "10 waiting clients" in line


def test_family(tmp_path: Path) -> None:
    args = ("--repeats", "1", "--cycles", "2")
    line, report = bench("bench_family", tmp_path / "family.json", *args)
    rows = report["results"]
    options = {r["option"]: r for r in rows if r["part"] == "turbo"}
    assert options["adapter, switched per batch (chosen with both regimes)"]["base_exact"] is True
    assert options["fuse/unfuse per switch (bfloat16)"]["weights_changed"] > 0
    cases = {r["case"] for r in rows if r["part"] == "lora"}
    assert {"cold load (read, check, load)", "3 unfused adapter(s)"} <= cases
    high = [r for r in rows if r.get("level") == "high"]
    assert {r["mode"] for r in high} == {"text-to-image", "edit"}
    assert all(r["full_passes"] == 15 and r["psnr_db"] > 0 for r in high)
    regular = [r for r in rows if r.get("level") == "regular"]
    assert all(r["max_abs_pixel_diff"] == 0 for r in regular)  # no fast paths on the CPU
    assert report["real_model_estimate"]["estimate"] is True
    assert "turbo adapter switch" in line
