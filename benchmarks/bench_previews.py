"""Step previews and the OpenAI route: what a preview costs, and the OpenAI route against fal's.

Usage::

    .venv/bin/python -m benchmarks.bench_previews        # writes results/previews.{json,csv}

Two parts, on the tiny model and the CPU:

* **previews** (in process): the same 512² edit (one 256² reference, 8 steps) through
  ``Flux2Engine.run`` with ``previews=0`` and ``previews=3``, interleaved. Every call to
  :func:`pipelines.previews.render` is timed (x0 estimate excluded: two tensor ops), and the
  x0 estimate + render of one preview is ``preview_s``; ``engine_p50_s`` with and without shows
  what a request pays end to end. The first preview of a VAE also fits its latent-to-RGB map
  (``fit_s``, once per process). For scale, ``vae_decode_s`` is the full VAE decode of the same
  latents (what the final image costs, and what a VAE-based preview would cost).
* **routes** (a real ``flux2-edit serve --model tiny``): the same edit through the fal sync
  route (``POST /fal-ai/flux-2/flash/edit``, a ``data:`` reference, ``sync_mode``) and the
  OpenAI route (``POST /v1/images/edits``, multipart, ``b64_json``), interleaved; p50 and p95 of
  each, and the OpenAI route's overhead over fal's.
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from benchmarks.bench_service import PROMPT, SEED, reference_png
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

NAME = "bench_previews"
SIZE = 512
REFERENCE_SIDE = 256


def _engine(cache_dir: Path) -> Any:
    from service.engines import create_engine
    from service.settings import Settings

    settings = Settings(
        model="tiny", cache_dir=cache_dir, reference_pixels=REFERENCE_SIDE * REFERENCE_SIDE
    )
    engine = create_engine(settings)
    engine.warmup()
    return engine


def measure_previews(repeats: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    from pipelines import previews
    from pipelines.sizes import ImageSize
    from pipelines.types import EditRequest

    renders: list[float] = []
    original = previews.render

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            renders.append(time.perf_counter() - started)

    reference = Image.open(io.BytesIO(reference_png(REFERENCE_SIDE)))
    reference.load()
    with tempfile.TemporaryDirectory() as cache:
        engine = _engine(Path(cache))
        pipe = engine.pipe
        started = time.perf_counter()
        previews.projection(pipe)
        fit_s = time.perf_counter() - started
        previews.render = timed
        try:
            times: dict[int, list[float]] = {0: [], 3: []}
            for _ in range(repeats):
                for count in (0, 3):
                    request = EditRequest(
                        request_id="bench",
                        prompt=PROMPT,
                        images=(reference,),
                        size=ImageSize(SIZE, SIZE),
                        seed=SEED,
                        previews=count,
                    )
                    began = time.perf_counter()
                    engine.run([request], on_step=lambda event: None)  # as the worker does
                    times[count].append(time.perf_counter() - began)
        finally:
            previews.render = original
        # the full VAE decode of one 512² latent, for scale
        channels = pipe.transformer.config.in_channels // 4
        latents, ids = pipe.prepare_latents(1, channels, SIZE, SIZE, torch.float32, "cpu", None)
        decode: list[float] = []
        x0: list[float] = []
        with torch.no_grad():
            for _ in range(repeats):
                began = time.perf_counter()
                previews.x0_estimate(latents, latents * 0.9, 0.6, 0.4)
                x0.append(time.perf_counter() - began)
                grid = pipe._unpack_latents_with_ids(latents, ids)
                began = time.perf_counter()
                pipe.vae.decode(pipe._unpatchify_latents(grid), return_dict=False)
                decode.append(time.perf_counter() - began)
    render = summarize(renders)
    rows = [
        {
            "part": "previews",
            "previews": count,
            "size": SIZE,
            **{f"engine_{k}_s" if k != "n" else k: v for k, v in summarize(values).items()},
        }
        for count, values in times.items()
    ]
    extras = {
        "render_p50_s": render["p50"],
        "render_p95_s": render["p95"],
        "x0_p50_s": summarize(x0)["p50"],
        "preview_s": round(render["p50"] + summarize(x0)["p50"], 5),
        "fit_s": round(fit_s, 4),
        "vae_decode_p50_s": summarize(decode)["p50"],
        "renders": len(renders),
        "engine_cost_of_3_previews_p50_s": round(
            summarize(times[3])["p50"] - summarize(times[0])["p50"], 4
        ),
    }
    return rows, extras


def measure_routes(repeats: int, root: Path) -> list[dict[str, Any]]:
    png = reference_png(REFERENCE_SIDE)
    fal_body = {
        "prompt": PROMPT,
        "image_urls": ["data:image/png;base64," + base64.b64encode(png).decode()],
        "image_size": {"width": SIZE, "height": SIZE},
        "seed": SEED,
        "sync_mode": True,
    }
    openai_form = {"prompt": PROMPT, "size": f"{SIZE}x{SIZE}", "seed": str(SEED)}
    settings = {
        "FLUX2_REFERENCE_PIXELS": str(REFERENCE_SIDE * REFERENCE_SIDE),
        "FLUX2_SAFETY_CHECKER": "none",
    }
    samples: dict[str, list[float]] = {"fal_sync": [], "openai_edits": []}
    with tiny_server(root, settings) as server, httpx.Client(timeout=600) as client:

        def once(path: str) -> float:
            began = time.perf_counter()
            if path == "fal_sync":
                answer = client.post(f"{server.origin}/fal-ai/flux-2/flash/edit", json=fal_body)
            else:
                answer = client.post(
                    f"{server.origin}/v1/images/edits",
                    data=openai_form,
                    files={"image": ("in.png", png, "image/png")},
                )
            answer.raise_for_status()
            return time.perf_counter() - began

        for path in samples:  # warm-up
            once(path)
        for i in range(repeats):
            for k in range(len(samples)):
                path = list(samples)[(i + k) % len(samples)]
                samples[path].append(once(path))
    rows = []
    fal_p50 = summarize(samples["fal_sync"])["p50"]
    for path, values in samples.items():
        stats = summarize(values)
        rows.append(
            {
                "part": "routes",
                "path": path,
                "size": SIZE,
                **{f"{k}_s" if k != "n" else k: v for k, v in stats.items()},
                "overhead_vs_fal_p50_s": round(stats["p50"] - fal_p50, 4),
            }
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    report = run_record(NAME)
    with LoadMonitor() as load:
        progress("previews: the tiny engine with and without 3 previews")
        rows, extras = measure_previews(args.repeats)
        progress("routes: fal sync against OpenAI edits on a tiny server")
        with tempfile.TemporaryDirectory() as root:
            rows += measure_routes(args.repeats, Path(root))
    report.update(results=rows, previews=extras, load=load.report(), repeats=args.repeats)
    return report


def summary(report: dict[str, Any]) -> str:
    extra = report["previews"]
    routes = {row["path"]: row for row in report["results"] if row["part"] == "routes"}
    return (
        f"one preview {1000 * extra['preview_s']:.1f} ms (VAE decode of the same latents "
        f"{1000 * extra['vae_decode_p50_s']:.0f} ms; map fitted once in "
        f"{1000 * extra['fit_s']:.0f} ms); OpenAI edits p50 "
        f"{routes['openai_edits']['p50_s']:.3f} s vs fal sync {routes['fal_sync']['p50_s']:.3f} s"
    )


def main() -> None:
    parser = benchmark_parser(__doc__ or NAME, RESULTS_DIR / "previews.json")
    parser.add_argument("--repeats", type=int, default=8, help="runs per variant")
    run_benchmark(NAME, parser.parse_args(), run, summary)


if __name__ == "__main__":
    main()
