"""CPU: one request on two ranks (Ulysses, tensor parallel) against one process, tiny model.

Usage::

    .venv/bin/python -m benchmarks.bench_parallel        # writes results/parallel-cpu.{json,csv}

What the group machinery costs, measured on the CPU (gloo) with the tiny checkpoint, where the
transformer is too small for parallelism to pay: the figures are overheads, not speed-ups. The same
512x512 edit with one reference runs in one process (:class:`Flux2Engine`, every CPU thread) and on
two ranks (:class:`ParallelEngine`, half the threads each), with a cancel check and a progress
callback as the worker passes them; the one-process run is repeated with a rank's share of the
threads, the fair comparison for the machinery's cost. Per layout:

* ``edit_s``: the edit as the worker sees it (driver wall time), median of the repeats;
* ``denoise_s``, ``s_per_step``: rank 0's denoising loop;
* ``driver_overhead_s``: ``edit_s`` minus rank 0's own engine time: pickling the batch and the
  results through the pipes, and the per-step progress and cancel round trips;
* ``share_s``, ``agree_s``: rank 0's broadcasts of the prepared batch and of the per-step
  cancellation decision (the group's own communication);
* ``comm_share``: the time every rank spends inside collectives (diffusers' all-to-alls or
  all-reduces plus the group's broadcasts, torch profiler, separate profiled runs) over its
  denoising time, averaged over the ranks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS_DIR, benchmark_parser, progress, run_benchmark, run_record

NAME = "bench_parallel"
LAYOUTS = ("ulysses:2", "tp:2")


def _request() -> Any:
    from pipelines.sizes import ImageSize
    from pipelines.types import EditRequest

    rng = np.random.default_rng(0)
    reference = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return EditRequest("bench", "make the car #FF5733", (reference,), ImageSize(512, 512), seed=1)


def _timed(engine: Any, request: Any, repeats: int) -> list[dict[str, float]]:
    """``repeats`` edits after one warm-up, each with the worker's callbacks."""
    runs = []
    for index in range(repeats + 1):
        started = time.perf_counter()
        (result,) = engine.run([request], on_step=lambda event: None, should_cancel=lambda _: False)
        wall = time.perf_counter() - started
        if index:
            runs.append({"edit_s": wall, **result.timings})
    return runs


def _row(name: str, runs: list[dict[str, float]], steps: int) -> dict[str, Any]:
    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    return {
        "layout": name,
        "repeats": len(runs),
        "edit_s": round(median("edit_s"), 4),
        "denoise_s": round(median("denoise"), 4),
        "s_per_step": round(median("denoise") / steps, 4),
        "encode_s": round(median("encode"), 4),
        "decode_s": round(median("decode"), 4),
        "driver_overhead_s": round(
            statistics.median(run["edit_s"] - run["inference"] for run in runs), 4
        ),
    }


def _delta(after: list[dict[str, Any]], before: list[dict[str, Any]], key: str) -> list[float]:
    return [a[key] - b[key] for a, b in zip(after, before, strict=True)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pipelines.flux2 import Flux2Engine, Flux2EngineConfig, quiet_libraries
    from pipelines.layout import parse_layout
    from pipelines.parallel import ParallelEngine
    from pipelines.schedules import parse_schedule
    from weights.tiny import build_tiny_checkpoint

    quiet_libraries()
    steps = args.steps
    folder = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    config = Flux2EngineConfig(
        model_path=build_tiny_checkpoint(folder / "flux2-tiny"),
        device="cpu",
        schedule=parse_schedule(",".join(f"{1 - i / steps:.4f}" for i in range(steps))),
        reference_pixels=256 * 256,
    )
    request = _request()
    report = run_record(NAME, ("torch", "diffusers"))
    report["settings"] = {
        "output": "512x512",
        "reference": "256x256",
        "steps": steps,
        "repeats": args.repeats,
        "profiled_repeats": args.profiled,
        "threads_one_process": torch.get_num_threads(),
    }
    rows = []

    threads = torch.get_num_threads()
    single = Flux2Engine(config)
    single.load()
    for count in dict.fromkeys((threads, max(1, threads // 2))):  # all threads, a rank's share
        progress(f"one process, {count} thread(s)")
        torch.set_num_threads(count)
        row = _row(f"one process, {count} thread(s)", _timed(single, request, args.repeats), steps)
        rows.append(row | {"threads": count})
    torch.set_num_threads(threads)
    del single

    for name in LAYOUTS:
        progress(name)
        layout = parse_layout(name)
        assert layout is not None
        engine = ParallelEngine(config, layout)
        started = time.perf_counter()
        engine.load()
        load_s = time.perf_counter() - started
        try:
            before = engine.rank_stats()
            runs = _timed(engine, request, args.repeats)
            after = engine.rank_stats()
            row = _row(name, runs, steps)
            edits = args.repeats + 1  # the warm-up edit is in the rank counters too
            row["share_s"] = round(_delta(after, before, "share_s")[0] / edits, 4)
            row["agree_s"] = round(_delta(after, before, "agree_s")[0] / edits, 4)
            row["bytes_shared"] = (after[0]["bytes_shared"] - before[0]["bytes_shared"]) // edits
            engine.set_profiling(True)
            before = engine.rank_stats()
            for _ in range(args.profiled):
                engine.run([request])
            after = engine.rank_stats()
            comm = _delta(after, before, "comm_s")
            denoise = _delta(after, before, "denoise_s")
            shares = [c / d for c, d in zip(comm, denoise, strict=True)]
            row["comm_share"] = round(statistics.mean(shares), 3)
            row["comm_share_by_rank"] = [round(share, 3) for share in shares]
            row["load_s"] = round(load_s, 2)
            row["threads_per_rank"] = engine.reports[0].get("threads")
            rows.append(row)
        finally:
            engine.close()
    base = rows[0]
    for row in rows[1:]:
        row["edit_vs_one_process"] = round(row["edit_s"] / base["edit_s"], 3)
        row["step_vs_one_process"] = round(row["s_per_step"] / base["s_per_step"], 3)
        row["threads"] = row.get("threads", row.pop("threads_per_rank", None))
    report["results"] = rows
    return report


def summary(report: dict[str, Any]) -> str:
    rows = report["results"]
    steps = report["settings"]["steps"]
    single = [row for row in rows if row["layout"].startswith("one process")]
    parts = [
        f"512² 1 ref {steps} steps, one process "
        + ", ".join(f"{row['s_per_step']:.3f} s/step ({row['threads']} thr)" for row in single)
    ]
    for row in rows[len(single) :]:
        parts.append(
            f"{row['layout']} {row['s_per_step']:.3f} s/step (x{row['step_vs_one_process']:.2f}), "
            f"comm {100 * row['comm_share']:.0f} %, driver {1000 * row['driver_overhead_s']:.0f} ms"
        )
    return "; ".join(parts)


def main() -> int:
    parser = benchmark_parser(__doc__ or NAME, RESULTS_DIR / "parallel-cpu.json")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profiled", type=int, default=2, help="profiled edits per layout")
    run_benchmark(NAME, parser.parse_args(), run, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
