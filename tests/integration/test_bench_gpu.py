"""The GPU benchmark: skips cleanly without CUDA, and every code path runs (``--smoke``, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def bench_gpu(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA it would run the real thing")
def test_without_cuda_it_skips_and_records_why(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = bench_gpu("--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "bench_gpu: skipped: no CUDA device"
    report = json.loads(out.read_text())
    assert report["skipped"] is True
    assert report["reason"] == "no CUDA device"
    assert report["git"]["sha"]
    # What needs no GPU is still there: the full-size model's size and FLOPs per step.
    analytic = report["analytic"]
    assert 32.0e9 < analytic["transformer_params"] < 32.4e9  # FLUX.2 [dev]: 32.2 B
    per_step = {row["references"]: row["total_tflop"] for row in analytic["per_step_1024"]}
    assert per_step[1] < per_step[2] < per_step[4]


@pytest.mark.slow
def test_smoke_run_exercises_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = bench_gpu("--smoke", "--refs", "1", "2", "--repeats", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("bench_gpu: cpu (smoke): matmul")
    report = json.loads(out.read_text())
    rows = report["transformer"]
    timed = {(r["variant"], r["references"]) for r in rows if "s_per_step" in r}
    for variant in ("bf16", "fused_qkv", "compile_repeated_blocks"):
        assert {(variant, 1), (variant, 2)} <= timed, variant
    assert all(r["s_per_step"] > 0 and r["floor_s"] > 0 for r in rows if "s_per_step" in r)
    fp8 = [r for r in rows if r["variant"] == "fp8"]
    assert fp8 and fp8[0]["error"].startswith("unavailable")  # needs CUDA >= 8.9
    assert report["vae"]["encode_s"] > 0 and report["vae"]["decode_s"] > 0
    assert report["text_encoder"]["pass_s"] > 0
    assert "errors" not in report
    assert (tmp_path / "gpu.csv").is_file()
