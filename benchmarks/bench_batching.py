"""Batching: throughput and latency at concurrency 1, 4 and 16, batching on against off.

Usage::

    .venv/bin/python -m benchmarks.bench_batching           # writes results/batching.{json,csv}

Two real ``flux2-edit serve --model tiny`` servers run side by side on free ports, with their own
cache directory and ``FLUX2_SAFETY_CHECKER=none``:

* **on**: ``FLUX2_MAX_BATCH_IMAGES=4``, ``FLUX2_BATCH_WINDOW_MS=10`` (the defaults);
* **off**: ``FLUX2_MAX_BATCH_IMAGES=1`` (every job is its own engine call, no window).

At each concurrency C, C client threads each send ``--per-client`` edits back to back through
the queue (submit, poll the status, fetch the result). The two servers take turns level by level,
for ``--rounds`` rounds, so a change in machine load hits both; the summary gives the pooled
ratio and its spread over the rounds. Every request is a 512² edit of one 256x256 reference
(``FLUX2_REFERENCE_PIXELS`` 256*256), so all of them can share a batch. Throughput = images /
wall time of the level; latency = submit to result, per request. The batch each job ran in is
read from its log (``Running FLUX.2 … (batch of N)``). Before the servers start, the engine
alone is timed in this process on a batch of 1 and of 4, which is the most batching can give.

Clients poll every 100 ms, as the official Python client does (``fal_client``'s
``DEFAULT_QUEUE_POLL_INTERVAL``), not every 10 ms as ``bench_service`` does: 16 clients polling
every 10 ms send up to 1,600 status requests a second, and on a 2-core machine answering them
takes CPU from the engine, which would measure the polling rather than the batching.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.bench_service import REFERENCE_SIDE, queue_edit, reference_png, request_body
from benchmarks.common import (
    RESULTS_DIR,
    LoadMonitor,
    benchmark_parser,
    progress,
    run_benchmark,
    run_record,
    summarize,
    tiny_server,
)

NAME = "bench_batching"
SIZE = 512
CONCURRENCY = (1, 4, 16)
MODES = {
    "on": {"FLUX2_MAX_BATCH_IMAGES": "4", "FLUX2_BATCH_WINDOW_MS": "10"},
    "off": {"FLUX2_MAX_BATCH_IMAGES": "1", "FLUX2_BATCH_WINDOW_MS": "10"},
}
BATCH_LOG = re.compile(r"batch of (\d+)")
STATUS_ROUTE = "/queue/fal-ai/flux-2/requests/{id}/status"


def batch_size(client: httpx.Client, status_url: str) -> int | None:
    """The size of the batch the job ran in, from its log."""
    answer = client.get(status_url, params={"logs": "1"})
    for entry in answer.json().get("logs") or []:
        found = BATCH_LOG.search(str(entry.get("message", "")))
        if found:
            return int(found.group(1))
    return None


def run_level(
    origin: str, concurrency: int, per_client: int, png: bytes, poll: float, seed0: int
) -> tuple[dict[str, Any], list[float]]:
    """``concurrency`` closed-loop clients, ``per_client`` edits each: a row and the latencies."""
    latencies: list[float] = []
    inferences: list[float] = []
    batches: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def client_main(index: int) -> None:
        with httpx.Client(timeout=600) as client:
            start.wait()
            for k in range(per_client):
                body = request_body(SIZE, png, seed=seed0 + index * per_client + k)
                try:
                    seconds, output, request_id = queue_edit(client, origin, body, poll=poll)
                    size = batch_size(client, f"{origin}{STATUS_ROUTE.format(id=request_id)}")
                except Exception as exc:  # recorded, and the level counts as failed
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    latencies.append(seconds)
                    inferences.append(float(output.get("timings", {}).get("inference", 0.0)))
                    if size is not None:
                        batches.append(size)

    threads = [
        threading.Thread(target=client_main, args=(i,), name=f"client-{i}")
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    stats = summarize(latencies) if latencies else {}
    row = {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "wall_s": round(wall, 3),
        "throughput_images_per_s": round(len(latencies) / wall, 3),
        **{f"latency_{k}_s" if k != "n" else "latency_n": v for k, v in stats.items()},
        "engine_inference_p50_s": summarize(inferences)["p50"] if inferences else None,
        "mean_batch": round(sum(batches) / len(batches), 2) if batches else None,
        "jobs_by_batch_size": {str(b): batches.count(b) for b in sorted(set(batches))},
    }
    return row, latencies


def engine_batch_gain(cache_dir: Path, png: bytes, repeats: int) -> dict[str, Any]:
    """The engine alone, in this process: seconds per image for a batch of 1 and of 4."""
    import io

    from PIL import Image

    from pipelines.sizes import ImageSize
    from pipelines.types import EditRequest
    from service.engines import create_engine
    from service.settings import Settings

    engine = create_engine(
        Settings(
            model="tiny", cache_dir=cache_dir, reference_pixels=REFERENCE_SIDE * REFERENCE_SIDE
        )
    )
    engine.warmup()
    reference = Image.open(io.BytesIO(png))
    reference.load()

    def batch(n: int) -> float:
        requests = [
            EditRequest(f"b{k}", "make it #FF5733", (reference,), ImageSize(SIZE, SIZE), seed=k)
            for k in range(n)
        ]
        started = time.perf_counter()
        engine.run(requests)
        return (time.perf_counter() - started) / n

    for n in (1, 4):  # warm-up for both shapes
        batch(n)
    per_image: dict[int, list[float]] = {1: [], 4: []}
    for _ in range(repeats):
        for n in (1, 4):
            per_image[n].append(batch(n))
    one, four = summarize(per_image[1])["p50"], summarize(per_image[4])["p50"]
    return {
        "repeats": repeats,
        "batch1_s_per_image": one,
        "batch4_s_per_image": four,
        "throughput_gain": round(one / four, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    png = reference_png()
    base = {
        "FLUX2_REFERENCE_PIXELS": str(REFERENCE_SIDE * REFERENCE_SIDE),
        "FLUX2_SAFETY_CHECKER": "none",
    }
    per_client = {1: args.per_client_1, 4: args.per_client_4, 16: args.per_client_16}
    rows: list[dict[str, Any]] = []
    latencies: dict[tuple[str, int], list[float]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flux2-bench-batching-") as tmp, LoadMonitor() as load:
        root = Path(tmp)
        engine_only = engine_batch_gain(root / "cache", png, args.engine_repeats)
        progress(
            f"engine alone: {engine_only['batch1_s_per_image']:.3f} s/image in a batch of 1, "
            f"{engine_only['batch4_s_per_image']:.3f} in a batch of 4"
        )
        cache = {"FLUX2_CACHE_DIR": str(root / "cache")}  # one tiny checkpoint for all
        with (
            tiny_server(root / "on", {**base, **cache, **MODES["on"]}) as on,
            tiny_server(root / "off", {**base, **cache, **MODES["off"]}) as off,
        ):
            servers = {"on": on.origin, "off": off.origin}
            for origin in servers.values():  # every batch shape once, unmeasured
                run_level(origin, 16, 1, png, args.poll, seed0=10_000)  # warm-up
            seed = 0
            for round_index in range(args.rounds):
                for concurrency in CONCURRENCY:
                    order = ("on", "off") if round_index % 2 == 0 else ("off", "on")
                    for mode in order:
                        row, seconds = run_level(
                            servers[mode],
                            concurrency,
                            per_client[concurrency],
                            png,
                            args.poll,
                            seed,
                        )
                        seed += 1000
                        rows.append({"batching": mode, "round": round_index, **row})
                        latencies.setdefault((mode, concurrency), []).extend(seconds)
                        progress(
                            f"batching {mode}, concurrency {concurrency}: "
                            f"{row['throughput_images_per_s']:.2f} img/s, "
                            f"p95 {row.get('latency_p95_s', float('nan')):.3f} s, "
                            f"mean batch {row['mean_batch']}"
                        )
        load_report = load.report()
    report = run_record(NAME, ("torch", "diffusers", "httpx", "uvicorn", "fastapi"))
    report.update(
        {
            "load_during_run": load_report,
            "wall_s": round(time.perf_counter() - started, 1),
            "setup": {
                "model": "tiny (random weights, real FLUX.2 token counts)",
                "schedule": "turbo (8 steps), the default",
                "size": f"{SIZE}x{SIZE}",
                "reference": f"one {REFERENCE_SIDE}x{REFERENCE_SIDE} PNG as a data URI",
                "modes": MODES,
                "poll_seconds": args.poll,
                "per_client": {str(k): v for k, v in per_client.items()},
                "rounds": args.rounds,
            },
            "engine_alone": engine_only,
            "results": rows,
            "combined": combine(rows, latencies),
        }
    )
    return report


def combine(
    rows: list[dict[str, Any]], latencies: dict[tuple[str, int], list[float]]
) -> list[dict[str, Any]]:
    """Rounds pooled per (mode, concurrency): images / total wall time, latency percentiles of
    every request, and the spread of the on/off throughput ratio over the rounds."""
    pooled = []
    for concurrency in CONCURRENCY:
        for mode in MODES:
            mine = [r for r in rows if r["batching"] == mode and r["concurrency"] == concurrency]
            seconds = latencies.get((mode, concurrency), [])
            if not mine or not seconds:
                continue
            images = sum(r["requests"] for r in mine)
            stats = summarize(seconds)
            row: dict[str, Any] = {
                "batching": mode,
                "concurrency": concurrency,
                "requests": images,
                "errors": sum(r["errors"] for r in mine),
                "throughput_images_per_s": round(images / sum(r["wall_s"] for r in mine), 3),
                "latency_p50_s": stats["p50"],
                "latency_p95_s": stats["p95"],
            }
            if mode == "on":
                ratios = []
                for r in mine:
                    off = [
                        o
                        for o in rows
                        if o["batching"] == "off"
                        and o["concurrency"] == concurrency
                        and o["round"] == r["round"]
                    ]
                    if off:
                        ratios.append(
                            r["throughput_images_per_s"] / off[0]["throughput_images_per_s"]
                        )
                if ratios:
                    row["round_gain_min"] = round(min(ratios), 3)
                    row["round_gain_max"] = round(max(ratios), 3)
            pooled.append(row)
    return pooled


def summary(report: dict[str, Any]) -> str:
    pooled = {(r["batching"], r["concurrency"]): r for r in report["combined"]}
    parts = []
    for concurrency in CONCURRENCY:
        on, off = pooled.get(("on", concurrency)), pooled.get(("off", concurrency))
        if on is None or off is None:
            continue
        gain = on["throughput_images_per_s"] / off["throughput_images_per_s"]
        spread = (
            f", rounds x{on['round_gain_min']:.2f}-{on['round_gain_max']:.2f}"
            if "round_gain_min" in on
            else ""
        )
        parts.append(
            f"c={concurrency}: on {on['throughput_images_per_s']:.2f} vs off "
            f"{off['throughput_images_per_s']:.2f} img/s (x{gain:.2f}{spread}), p95 "
            f"{on['latency_p95_s']:.2f} vs {off['latency_p95_s']:.2f} s"
        )
    engine = report["engine_alone"]
    parts.append(f"engine alone: batch of 4 x{engine['throughput_gain']:.2f} per image")
    errors = sum(r["errors"] for r in report["results"])
    load = report["load_during_run"].get("mean", "?")
    return "; ".join(parts) + f"; errors {errors}; load {load}"


def main() -> int:
    parser = benchmark_parser(__doc__, RESULTS_DIR / "batching.json")
    parser.add_argument("--per-client-1", type=int, default=12)
    parser.add_argument("--per-client-4", type=int, default=6)
    parser.add_argument("--per-client-16", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="on/off alternations per level")
    parser.add_argument("--engine-repeats", type=int, default=5, help="in-process batch timings")
    parser.add_argument("--poll", type=float, default=0.1, help="status poll interval (s)")
    report = run_benchmark(NAME, parser.parse_args(), run, summary)
    failed = sum(r["errors"] for r in report["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
