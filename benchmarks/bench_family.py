"""The FLUX.2 family on one engine: the Turbo LoRA's options, per-request LoRA costs, ``high``.

Usage::

    .venv/bin/python -m benchmarks.bench_family      # writes results/family.{json,csv}

Everything runs on the tiny checkpoint in this process (built into a temporary folder, with a
random stand-in Turbo LoRA beside it and random style LoRAs from :mod:`weights.loras`):

1. **Turbo LoRA options** (regimes ``turbo`` and ``base`` on one set of weights): *fused* once at
   load (only possible when only ``turbo`` is served), an *adapter* switched per batch with
   ``set_adapters``/``disable_lora``, or *fuse/unfuse* on every switch. For each: the switch
   cost, the per-step cost, and whether ``base`` still computes FLUX.2 [dev] exactly afterwards
   (the weights after repeated fuse/unfuse cycles, in float32 and in bfloat16).
2. **Per-request LoRA**: a cold load (read, check, load into the transformer), a cached
   activation, and the per-step cost of 1, 2 and 3 unfused adapters.
3. **``acceleration: high``** (TaylorSeer Lite, :mod:`pipelines.acceleration`) against ``none``
   at 28 steps through the engine: time and deviation (mean and max absolute pixel difference,
   PSNR) for a text-to-image and an edit.
4. **Estimates for FLUX.2 [dev]** (arithmetic, marked as such): what an unfused LoRA of rank r
   adds to a 1024² step, from the real layer shapes on a meta-device model.

Times are medians over repeats, wall clock and this process's CPU time (the CPU time moves
less when a neighbour shares the machine). The tiny model's steps cost per-module Python
overhead, not arithmetic, so its *ratios* overstate what adapters and hooks cost on the real
model (part 4 gives the arithmetic).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    LoadMonitor,
    benchmark_parser,
    progress,
    run_benchmark,
    run_record,
)

NAME = "bench_family"
SIZE = 128
TURBO_STEPS = 8
BASE_STEPS = 28
LORA_RANK = 4
REAL_RANKS = (16, 64, 128, 256)


def timed(call: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Fastest wall and CPU seconds of ``call`` over ``repeats`` runs (after one warm-up): on
    a shared machine the minimum is the least disturbed run."""
    return interleaved({"only": (None, call)}, repeats)["only"]


def interleaved(
    cases: dict[str, tuple[Callable[[], Any] | None, Callable[[], Any]]], rounds: int
) -> dict[str, dict[str, float]]:
    """``{case: (prepare, call)}`` timed round-robin (a neighbour's load hits every case
    alike); per case the fastest wall and CPU seconds of ``call``, ``prepare`` untimed."""
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(rounds + 1):
        for name, (prepare, call) in cases.items():
            if prepare is not None:
                prepare()
            w, c = time.perf_counter(), time.process_time()
            call()
            if round_:  # round 0 warms up
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
    return {
        name: {"wall_s": round(min(wall[name]), 6), "cpu_s": round(min(cpu[name]), 6)}
        for name in cases
    }


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else round(10 * math.log10(255.0**2 / mse), 2)


class Tiny:
    """The tiny pipeline with its prompt encoded once, and a way to time steps."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from diffusers import Flux2Pipeline

        self.torch = torch
        self.pipe = Flux2Pipeline.from_pretrained(model_dir, dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        self.embeds, _ = self.pipe.encode_prompt(prompt="a lighthouse at dusk", device="cpu")

    def latents(self, steps: int = TURBO_STEPS) -> Any:
        out = self.pipe(
            prompt_embeds=self.embeds,
            height=SIZE,
            width=SIZE,
            num_inference_steps=steps,
            generator=self.torch.Generator("cpu").manual_seed(0),
            output_type="latent",
        )
        return out.images


def per_step(total: dict[str, float]) -> dict[str, float]:
    return {k: round(v / TURBO_STEPS, 6) for k, v in total.items()}


def base_weights(pipe: Any) -> dict[str, Any]:
    return {
        name: p.detach().clone()
        for name, p in pipe.transformer.named_parameters()
        if "lora_" not in name
    }


def drift(pipe: Any, before: dict[str, Any]) -> dict[str, Any]:
    changed = total = 0
    worst = 0.0
    for name, p in pipe.transformer.named_parameters():
        if name not in before:
            continue
        diff = (p.detach() - before[name]).abs()
        changed += int((diff > 0).sum())
        total += diff.numel()
        worst = max(worst, float(diff.max()))
    return {"weights_changed": changed, "weights": total, "max_abs_change": worst}


def turbo_options(model_dir: Path, turbo: Path, repeats: int, cycles: int) -> list[dict[str, Any]]:
    """Part 1: fused, adapter and fuse/unfuse, each on its own pipeline."""
    plain = Tiny(model_dir)
    fused = Tiny(model_dir)
    mark = time.perf_counter()
    fused.pipe.load_lora_weights(str(turbo), adapter_name="turbo")
    fused.pipe.fuse_lora(adapter_names=["turbo"])
    fused.pipe.unload_lora_weights()
    fuse_setup = time.perf_counter() - mark
    adapter = Tiny(model_dir)
    before = base_weights(adapter.pipe)
    mark = time.perf_counter()
    adapter.pipe.load_lora_weights(str(turbo), adapter_name="turbo")
    adapter_setup = time.perf_counter() - mark

    def turbo_on() -> None:
        adapter.pipe.enable_lora()
        adapter.pipe.set_adapters(["turbo"], [1.0])

    steps = interleaved(
        {
            "plain": (None, plain.latents),
            "fused": (None, fused.latents),
            "adapter": (turbo_on, adapter.latents),
            "adapter off": (adapter.pipe.disable_lora, adapter.latents),
        },
        repeats,
    )
    switching = interleaved(
        {"on": (None, turbo_on), "off": (None, adapter.pipe.disable_lora)}, repeats * 10
    )
    reference = per_step(steps["plain"])
    rows: list[dict[str, Any]] = [
        {"part": "turbo", "option": "no LoRA (reference)", **_step(reference)},
        {
            "part": "turbo",
            "option": "fused at load (turbo only)",
            "setup_s": round(fuse_setup, 4),
            **_step(per_step(steps["fused"]), reference),
            "base_exact": "n/a (base not served)",
        },
        {
            "part": "turbo",
            "option": "adapter, switched per batch (chosen with both regimes)",
            "setup_s": round(adapter_setup, 4),
            "switch_s": max(switching["on"]["wall_s"], switching["off"]["wall_s"]),
            **_step(per_step(steps["adapter"]), reference),
            "base_step_cpu_vs_plain": round(
                steps["adapter off"]["cpu_s"] / steps["plain"]["cpu_s"], 3
            ),
            # The same pipeline with the adapter on and off: free of instance-to-instance noise.
            "step_cpu_on_vs_off": round(
                steps["adapter"]["cpu_s"] / steps["adapter off"]["cpu_s"], 3
            ),
            "base_exact": drift(adapter.pipe, before)["weights_changed"] == 0,
        },
    ]
    for dtype_name in ("float32", "bfloat16"):
        tiny = Tiny(model_dir)
        if dtype_name == "bfloat16":
            tiny.pipe.transformer.to(tiny.torch.bfloat16)
        tiny.pipe.load_lora_weights(str(turbo), adapter_name="turbo")
        before = base_weights(tiny.pipe)
        mark = time.perf_counter()
        for _ in range(cycles):
            tiny.pipe.fuse_lora(adapter_names=["turbo"])
            tiny.pipe.unfuse_lora()
        cycle = (time.perf_counter() - mark) / cycles
        moved = drift(tiny.pipe, before)
        rows.append(
            {
                "part": "turbo",
                "option": f"fuse/unfuse per switch ({dtype_name})",
                "switch_s": round(cycle / 2, 6),
                "base_exact": moved["weights_changed"] == 0,
                "cycles": cycles,
                **moved,
            }
        )
    return rows


def _step(step: dict[str, float], reference: dict[str, float] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"step_wall_s": step["wall_s"], "step_cpu_s": step["cpu_s"]}
    if reference is not None:
        row["step_cpu_vs_plain"] = round(step["cpu_s"] / reference["cpu_s"], 3)
    return row


def lora_costs(
    model_dir: Path, loras: list[Path], repeats: int, max_bytes: int
) -> list[dict[str, Any]]:
    """Part 2: cold load, cached activation and per-step cost of 1-3 adapters (AdapterCache)."""
    import torch

    from pipelines.adapters import AdapterCache, linear_shapes
    from pipelines.types import LoraWeights

    tiny = Tiny(model_dir)
    cache = AdapterCache(tiny.pipe, max_bytes, torch.float32, linear_shapes(tiny.pipe.transformer))
    weights = [LoraWeights(f"{i:064x}", path, 0.8) for i, path in enumerate(loras, start=1)]
    mark = time.perf_counter()
    cache.activate((), weights[:1])
    cold = time.perf_counter() - mark
    switching = interleaved(
        {
            "off": (None, lambda: cache.activate((), [])),
            "on": (None, lambda: cache.activate((), weights[:1])),
        },
        repeats * 10,
    )
    for lora in weights[1:]:
        cache.activate((), [lora])  # loaded once, so the step timings below switch only

    def using(count: int) -> Callable[[], None]:
        return lambda: cache.activate((), weights[:count])

    steps = interleaved(
        {str(count): (using(count), tiny.latents) for count in range(len(weights) + 1)},
        repeats,
    )
    reference = per_step(steps["0"])
    rows: list[dict[str, Any]] = [
        {"part": "lora", "case": "cold load (read, check, load)", "seconds": round(cold, 4)},
        {
            "part": "lora",
            "case": "cached activation (set_adapters)",
            "seconds": switching["on"]["wall_s"],
        },
        {"part": "lora", "case": "no adapter", **_step(reference, reference)},
    ]
    for count in range(1, len(weights) + 1):
        rows.append(
            {
                "part": "lora",
                "case": f"{count} unfused adapter(s)",
                **_step(per_step(steps[str(count)]), reference),
            }
        )
    stats = cache.stats
    rows.append({"part": "lora", "case": "cache stats", "hits": stats.hits,
                 "misses": stats.misses, "bytes": stats.bytes})  # fmt: skip
    return rows


def acceleration(model_dir: Path, repeats: int) -> list[dict[str, Any]]:
    """Part 3: ``high`` and ``regular`` against ``none`` at 28 steps, through the engine (the
    levels interleaved, round by round)."""
    from PIL import Image

    from pipelines.acceleration import full_passes
    from pipelines.flux2 import Flux2Engine, Flux2EngineConfig
    from pipelines.sizes import ImageSize
    from pipelines.types import Acceleration, EditRequest

    engine = Flux2Engine(
        Flux2EngineConfig(
            model_path=model_dir, regimes=frozenset({"base"}), reference_pixels=SIZE * SIZE
        )
    )
    engine.load()
    reference = Image.radial_gradient("L").convert("RGB").resize((SIZE, SIZE))
    levels: tuple[Acceleration, ...] = ("none", "regular", "high")
    rows: list[dict[str, Any]] = []
    for mode, images in (("text-to-image", ()), ("edit", (reference,))):
        outputs: dict[str, np.ndarray] = {}

        def call(
            level: Acceleration,
            images: tuple[Image.Image, ...] = images,
            outputs: dict[str, np.ndarray] = outputs,
        ) -> None:
            request = EditRequest(
                request_id="bench",
                prompt="a lighthouse at dusk",
                images=images,
                size=ImageSize(SIZE, SIZE),
                seed=5,
                guidance_scale=4.0,
                regime="base",
                steps=BASE_STEPS,
                acceleration=level,
            )
            (result,) = engine.run([request])
            outputs[level] = np.asarray(result.images[0], dtype=np.int16)

        def at(level: Acceleration) -> Callable[[], None]:
            return lambda: call(level)

        times = interleaved({level: (None, at(level)) for level in levels}, repeats)
        for level in ("regular", "high"):
            diff = np.abs(outputs[level] - outputs["none"])
            rows.append(
                {
                    "part": "acceleration",
                    "mode": mode,
                    "level": level,
                    "steps": BASE_STEPS,
                    "full_passes": full_passes(BASE_STEPS) if level == "high" else BASE_STEPS,
                    "wall_s": times[level]["wall_s"],
                    "cpu_s": times[level]["cpu_s"],
                    "none_wall_s": times["none"]["wall_s"],
                    "none_cpu_s": times["none"]["cpu_s"],
                    "speedup_cpu": round(times["none"]["cpu_s"] / times[level]["cpu_s"], 3),
                    "mean_abs_pixel_diff": round(float(diff.mean()), 3),
                    "max_abs_pixel_diff": int(diff.max()),
                    "psnr_db": psnr(outputs[level], outputs["none"]),
                }
            )
    return rows


def real_model_estimate() -> dict[str, Any]:
    """Part 4: what an unfused LoRA on every block linear adds to one FLUX.2 [dev] step."""
    import torch
    from diffusers import Flux2Transformer2DModel

    from benchmarks.bench_gpu import TRANSFORMER_CONFIG, StepShape, step_flops, token_group
    from benchmarks.bench_gpu import linear_weights_by_group as groups_of

    with torch.device("meta"):
        model = Flux2Transformer2DModel(**TRANSFORMER_CONFIG)
    groups = groups_of(model)
    per_rank = {"text": 0, "image": 0, "all": 0, "sample": 0}  # sum of (in + out) per group
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "transformer_blocks." in name:
            per_rank[token_group(name)] += module.in_features + module.out_features
    rows = {}
    for refs, label in ((0, "t2i_1024"), (1, "edit_1024_one_ref")):
        shape = StepShape(references=refs)
        tokens = {"text": shape.text_tokens, "image": shape.image_tokens, "all": shape.tokens}
        base = step_flops(groups, shape, TRANSFORMER_CONFIG)["total"]
        per_rank_flops = 2 * sum(n * tokens.get(g, 1) for g, n in per_rank.items())
        rows[label] = {f"rank_{r}": round(100 * r * per_rank_flops / base, 2) for r in REAL_RANKS}
    return {
        "estimate": True,
        "what": "extra FLOPs of one unfused LoRA on every block linear, % of a step's FLOPs",
        "percent_of_step": rows,
        "note": "FLOPs only: the small rank-r matmuls run below peak, so measured overhead is "
        "somewhat higher; fusing removes it (only with the turbo regime alone)",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from weights.loras import (
        ATTENTION_LINEARS,
        BLOCK_LINEARS,
        build_lora,
        build_tiny_turbo_lora,
    )
    from weights.tiny import build_tiny_checkpoint

    torch.set_num_threads(1)  # CPU time then means work done, not threads spinning
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flux2-bench-family-") as tmp, LoadMonitor() as load:
        model_dir = build_tiny_checkpoint(Path(tmp) / "FLUX.2-dev")
        turbo = build_tiny_turbo_lora(model_dir)
        loras = [
            build_lora(
                model_dir,
                Path(tmp) / f"style{i}.safetensors",
                seed=10 + i,
                rank=LORA_RANK,
                targets=ATTENTION_LINEARS if i == 2 else BLOCK_LINEARS,
            )
            for i in range(3)
        ]
        progress("part 1: the Turbo LoRA's options")
        rows = turbo_options(model_dir, turbo, args.repeats, args.cycles)
        progress("part 2: per-request LoRA")
        rows += lora_costs(model_dir, loras, args.repeats, max_bytes=64 * 2**20)
        progress("part 3: acceleration high vs none at 28 steps")
        rows += acceleration(model_dir, args.repeats)
        load_report = load.report()
    report = run_record(NAME, ("torch", "diffusers", "transformers", "peft"))
    report.update(
        {
            "load_during_run": load_report,
            "wall_s": round(time.perf_counter() - started, 1),
            "setup": {
                "model": "tiny (random weights), float32, CPU",
                "size": f"{SIZE}x{SIZE}",
                "lora_rank": LORA_RANK,
                "repeats": args.repeats,
                "turbo_steps_for_step_times": TURBO_STEPS,
            },
            "results": rows,
            "real_model_estimate": real_model_estimate(),
        }
    )
    return report


def summary(report: dict[str, Any]) -> str:
    rows = report["results"]
    adapter = next(r for r in rows if r.get("option", "").startswith("adapter"))
    bf16 = next(r for r in rows if r.get("option") == "fuse/unfuse per switch (bfloat16)")
    cold = next(r for r in rows if r.get("case", "").startswith("cold"))
    cached = next(r for r in rows if r.get("case", "").startswith("cached"))
    high = [r for r in rows if r.get("level") == "high"]
    est = report["real_model_estimate"]["percent_of_step"]["edit_1024_one_ref"]
    text = (
        f"turbo adapter switch {adapter['switch_s'] * 1000:.1f} ms, step on/off x"
        f"{adapter['step_cpu_on_vs_off']}; fuse/unfuse bf16 changes "
        f"{bf16['weights_changed']} base weights; LoRA cold {cold['seconds'] * 1000:.0f} ms, "
        f"cached {cached['seconds'] * 1000:.1f} ms; real rank-64 LoRA +{est['rank_64']} % per "
        "step (estimate)"
    )
    for row in high:
        text += (
            f"; high {row['mode']}: x{row['speedup_cpu']} CPU, PSNR {row['psnr_db']} dB, "
            f"mean |diff| {row['mean_abs_pixel_diff']}"
        )
    return text


def main() -> int:
    parser = benchmark_parser(__doc__, RESULTS_DIR / "family.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=20, help="fuse/unfuse cycles measured")
    run_benchmark(NAME, parser.parse_args(), run, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
