"""In-process engine latency: one scenario per (output size, reference count), warm-up first.

Usage::

    .venv/bin/python -m benchmarks.bench_engine --model tiny --out benchmarks/results/cpu-tiny.json

Records per scenario the median and mean seconds per call (and per output image), the engine's
own timing split (encode, denoise, decode), and peak memory (CUDA: max allocated; CPU: peak RSS),
with the git sha, device and library versions, as JSON plus a CSV row per scenario.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.sizes import ImageSize
from pipelines.types import EditRequest
from service.engines import create_engine
from service.settings import Settings


@dataclass(frozen=True)
class Scenario:
    width: int
    height: int
    references: int
    num_images: int = 1

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}-refs{self.references}-n{self.num_images}"


DEFAULT_SCENARIOS = (
    Scenario(512, 512, 1),
    Scenario(1024, 1024, 1),
    Scenario(1024, 1024, 3),
    Scenario(1024, 1024, 1, num_images=4),
)


def _request(scenario: Scenario, seed: int) -> EditRequest:
    refs = tuple(
        Image.new("RGB", (1024, 768), (40 * i, 90, 160)) for i in range(scenario.references)
    )
    return EditRequest(
        request_id=f"bench-{seed}",
        prompt="make the car #FF5733 and add a rainbow",
        images=refs,
        size=ImageSize(scenario.width, scenario.height),
        seed=seed,
        num_images=scenario.num_images,
    )


def _peak_memory_mb(torch: Any) -> float:
    if torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated()) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(settings: Settings, scenarios: tuple[Scenario, ...], repeats: int) -> dict[str, Any]:
    import diffusers
    import torch

    engine = create_engine(settings, progress=print)
    engine.warmup()
    rows = []
    for scenario in scenarios:
        engine.run([_request(scenario, 0)])  # shape-specific warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds, splits = [], []
        for i in range(repeats):
            started = time.perf_counter()
            (result,) = engine.run([_request(scenario, i + 1)])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
            splits.append(result.timings)
        row = {
            "scenario": scenario.name,
            **asdict(scenario),
            "steps": engine.num_steps,
            "repeats": repeats,
            "median_s": statistics.median(seconds),
            "mean_s": statistics.fmean(seconds),
            "min_s": min(seconds),
            "median_s_per_image": statistics.median(seconds) / scenario.num_images,
            "encode_s": statistics.median(t.get("encode", 0.0) for t in splits),
            "denoise_s": statistics.median(t.get("denoise", 0.0) for t in splits),
            "decode_s": statistics.median(t.get("decode", 0.0) for t in splits),
            "peak_memory_mb": _peak_memory_mb(torch),
        }
        print(json.dumps(row))
        rows.append(row)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    device = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    )
    return {
        "git_sha": sha,
        "device": device,
        "model": settings.engine.model,
        "schedule": settings.engine.schedule,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "results": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine.json"))
    parser.add_argument(
        "--scenario",
        action="append",
        help="WIDTHxHEIGHT:REFS[:NUM_IMAGES], repeatable (default: a standard set)",
    )
    args = parser.parse_args()
    scenarios: tuple[Scenario, ...] = DEFAULT_SCENARIOS
    if args.scenario:
        parsed = []
        for text in args.scenario:
            size, refs, *rest = text.split(":")
            width, height = (int(v) for v in size.lower().split("x"))
            parsed.append(Scenario(width, height, int(refs), int(rest[0]) if rest else 1))
        scenarios = tuple(parsed)
    report = run(Settings(model=args.model), scenarios, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    with args.out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(report["results"][0]))
        writer.writeheader()
        writer.writerows(report["results"])
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
