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
    assert per_step[0] < per_step[1] < per_step[3]


@pytest.mark.slow
def test_smoke_run_exercises_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = bench_gpu("--smoke", "--refs", "0", "1", "--repeats", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("bench_gpu: cpu (smoke): matmul")
    assert "recommend: " in line
    report = json.loads(out.read_text())
    rows = report["transformer"]
    timed = {(r["variant"], r["references"]) for r in rows if "s_per_step" in r}
    for variant in ("bf16", "fused_qkv", "compile_repeated_blocks"):
        assert {(variant, 0), (variant, 1)} <= timed, variant
    assert set(report["speedups"]) >= {"fused_qkv", "compile_repeated_blocks"}
    assert isinstance(report["recommend"], list)
    assert 0 < report["elapsed_s"] < report["settings"]["budget_s"]
    assert all(r["s_per_step"] > 0 and r["floor_s"] > 0 for r in rows if "s_per_step" in r)
    fp8 = [r for r in rows if r["variant"] == "fp8"]
    assert fp8 and fp8[0]["error"].startswith("unavailable")  # needs CUDA >= 8.9
    assert report["vae"]["encode_s"] > 0 and report["vae"]["decode_s"] > 0
    assert report["text_encoder"]["pass_s"] > 0
    assert "errors" not in report
    assert (tmp_path / "gpu.csv").is_file()


@pytest.mark.slow
def test_a_spent_budget_skips_what_is_left(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = bench_gpu("--smoke", "--refs", "0", "--budget-s", "0", "--no-text-encoder",
                     "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipped for time: bf16" in done.stdout
    rows = json.loads(out.read_text())["transformer"]
    assert rows and all("skipped" in row for row in rows)


def test_recommendations_need_a_win_at_every_shape() -> None:
    from benchmarks.bench_gpu import recommendations

    def row(variant: str, refs: int, seconds: float) -> dict[str, object]:
        return {"variant": variant, "references": refs, "s_per_step": seconds}

    report = {
        "transformer": [
            row("bf16", 0, 1.0), row("bf16", 3, 4.0),
            row("attention:flash", 0, 0.9), row("attention:flash", 3, 3.5),
            row("attention:_flash_3", 0, 0.8), row("attention:_flash_3", 3, 3.2),
            row("fused_qkv", 0, 0.99), row("fused_qkv", 3, 3.0),  # not at 0 refs
            row("compile_repeated_blocks", 0, 0.7), row("compile_repeated_blocks", 3, 2.9),
            row("fp8", 0, 0.6), {"variant": "fp8", "references": 3, "error": "out of memory"},
        ]
    }  # fmt: skip
    assert recommendations(report) == [
        "FLUX2_ATTENTION_BACKEND=_flash_3",
        "FLUX2_COMPILE_BLOCKS=true",
    ]
