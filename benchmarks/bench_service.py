"""Service overhead: the same edit through the HTTP queue, the sync route, and a direct engine call.

Usage::

    .venv/bin/python -m benchmarks.bench_service            # writes results/service.{json,csv}

A real ``flux2-edit serve --model tiny`` runs on a free loopback port with its own cache
directory (``FLUX2_SAFETY_CHECKER=none``, the other settings at their defaults, so batching is
on with its 10 ms window). For each output size (512² and 1024²) the script sends the same
request ``--repeats`` times through four paths, interleaved so that a change in machine load
hits them all alike:

* **queue**: ``POST /queue/…/flash/edit``, poll the status URL every 10 ms until ``COMPLETED``,
  ``GET`` the result (what fal clients do);
* **queue_poll100ms**: the same, polling every 100 ms as ``fal_client`` does by default (on a
  2-core machine the client's polling competes with the engine for the CPU);
* **sync**: ``POST /fal-ai/flux-2/flash/edit`` (the server polls its queue every 20 ms);
* **engine**: ``create_engine`` + ``engine.run`` in this process on the same tiny checkpoint,
  the same reference pixels, prompt, seed and size.

The reference is one 256x256 PNG (sent as a ``data:`` URI) and ``FLUX2_REFERENCE_PIXELS`` is
256*256 on both sides, so the tiny model stays fast on a CPU; only the output size varies.
Overhead = p50(end to end) - p50(engine); the ratio is p50(end to end) / p50(engine). The server
also reports its own engine time (``timings.inference``), so ``e2e - inference`` per request is
the overhead measured inside one process. The very first request of each size after ``/ready``
is recorded apart (``first_request_s`` of the queue row), to show what the start-up warm-up
leaves. A second, shorter pass runs the server with the default opennsfw checker (inputs and
outputs checked) to show what the checker adds.
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

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

NAME = "bench_service"
QUEUE_ROUTE = "/queue/fal-ai/flux-2/flash/edit"
SYNC_ROUTE = "/fal-ai/flux-2/flash/edit"
PROMPT = "make the car #FF5733 and add a rainbow"
GUIDANCE = 2.5
SEED = 1234
REFERENCE_SIDE = 256
POLL_SECONDS = 0.01
FAL_CLIENT_POLL_SECONDS = 0.1  # fal_client's DEFAULT_QUEUE_POLL_INTERVAL
PATHS = ("queue", "queue_poll100ms", "sync", "engine")


def reference_png(side: int = REFERENCE_SIDE) -> bytes:
    """A synthetic reference picture (gradient and shapes), PNG-encoded."""
    image = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((side // 8, side // 8, side // 2, side // 2), fill=(30, 160, 60))
    draw.rectangle((side // 2, side // 3, side - side // 8, side - side // 10), fill=(40, 40, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def request_body(size: int, png: bytes, seed: int = SEED) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "image_urls": ["data:image/png;base64," + base64.b64encode(png).decode()],
        "image_size": {"width": size, "height": size},
        "seed": seed,
        "guidance_scale": GUIDANCE,
        "num_images": 1,
        "output_format": "png",
    }


def queue_edit(
    client: httpx.Client, origin: str, body: dict[str, Any], poll: float = POLL_SECONDS
) -> tuple[float, dict[str, Any], str]:
    """Submit, poll the status every ``poll`` seconds, fetch the result.

    Returns the seconds from submit to result, the output and the request id.
    """
    started = time.perf_counter()
    submitted = client.post(origin + QUEUE_ROUTE, json=body)
    submitted.raise_for_status()
    urls = submitted.json()
    while True:
        status = client.get(urls["status_url"])
        if status.status_code == 200 and status.json().get("status") == "COMPLETED":
            break
        if status.status_code not in (200, 202):
            status.raise_for_status()
        time.sleep(poll)
    result = client.get(urls["response_url"])
    result.raise_for_status()
    return time.perf_counter() - started, result.json(), str(urls["request_id"])


def sync_edit(
    client: httpx.Client, origin: str, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    answer = client.post(origin + SYNC_ROUTE, json=body)
    answer.raise_for_status()
    return time.perf_counter() - started, answer.json()


def server_inference(output: dict[str, Any]) -> float:
    return float(output.get("timings", {}).get("inference", float("nan")))


def _make_engine(cache_dir: Path, reference_pixels: int) -> Any:
    from service.engines import create_engine
    from service.settings import Settings

    settings = Settings(model="tiny", cache_dir=cache_dir, reference_pixels=reference_pixels)
    engine = create_engine(settings)
    engine.warmup()  # as the worker does before it reports ready
    return engine


def _engine_call(
    engine: Any, size: int, png: bytes, outputs: list[Image.Image]
) -> Callable[[], tuple[float, float]]:
    from pipelines.sizes import ImageSize
    from pipelines.types import EditRequest

    reference = Image.open(io.BytesIO(png))
    reference.load()

    def call() -> tuple[float, float]:
        request = EditRequest(
            request_id="bench",
            prompt=PROMPT,
            images=(reference,),
            size=ImageSize(size, size),
            seed=SEED,
            guidance_scale=GUIDANCE,
        )
        started = time.perf_counter()
        (result,) = engine.run([request])
        seconds = time.perf_counter() - started
        outputs[:] = list(result.images)
        return seconds, float(result.timings["inference"])

    return call


def png_encode_seconds(image: Image.Image, repeats: int = 5) -> tuple[float, int]:
    """Median seconds and bytes of the worker's PNG encoding of one engine output."""
    from service.outputs import OutputFormat, encode_image

    times, data = [], b""
    for _ in range(repeats):
        started = time.perf_counter()
        data = encode_image(image, OutputFormat.PNG)
        times.append(time.perf_counter() - started)
    return summarize(times)["p50"], len(data)


def measure(
    origin: str,
    engine: Any | None,
    size: int,
    repeats: int,
    png: bytes,
    paths: tuple[str, ...],
    warmup: int = 2,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, Any]]:
    """Per path, end-to-end seconds and the engine's own seconds, ``repeats`` each, interleaved;
    plus the PNG encoding time and size of the engine's output (the worker's finisher work)."""
    body = request_body(size, png)
    outputs: list[Image.Image] = []
    engine_call = _engine_call(engine, size, png, outputs) if engine is not None else None
    samples: dict[str, dict[str, list[float]]] = {p: {"e2e": [], "inference": []} for p in paths}
    with httpx.Client(timeout=600) as client:

        def once(path: str) -> tuple[float, float]:
            if path == "queue":
                seconds, output, _ = queue_edit(client, origin, body)
                return seconds, server_inference(output)
            if path == "queue_poll100ms":
                seconds, output, _ = queue_edit(client, origin, body, poll=FAL_CLIENT_POLL_SECONDS)
                return seconds, server_inference(output)
            if path == "sync":
                seconds, output = sync_edit(client, origin, body)
                return seconds, server_inference(output)
            assert engine_call is not None
            return engine_call()

        extras: dict[str, Any] = {}
        for round_ in range(warmup):
            for path in paths:
                seconds, _ = once(path)
                if round_ == 0 and path == paths[0]:
                    # The first request of this size since the server said ready: the engine's
                    # warm-up should have made it no slower than the rest.
                    extras["first_request_s"] = round(seconds, 4)
        for i in range(repeats):
            for k in range(len(paths)):  # rotate the order every round
                path = paths[(i + k) % len(paths)]
                seconds, inference = once(path)
                samples[path]["e2e"].append(seconds)
                samples[path]["inference"].append(inference)
    if outputs:
        extras["png_encode_s"], extras["png_bytes"] = png_encode_seconds(outputs[0])
    return samples, extras


def rows_for(
    samples: dict[str, dict[str, list[float]]],
    size: int,
    safety: str,
    engine_p50: float | None,
    extras: dict[str, Any],
) -> list[dict[str, Any]]:
    rows = []
    for path, values in samples.items():
        e2e = summarize(values["e2e"])
        inner = [t - i for t, i in zip(values["e2e"], values["inference"], strict=True)]
        row: dict[str, Any] = {
            "safety_checker": safety,
            "size": size,
            "path": path,
            **{f"{k}_s" if k != "n" else k: v for k, v in e2e.items()},
            "engine_inference_p50_s": summarize(values["inference"])["p50"],
        }
        if path != "engine":
            row["in_server_overhead_p50_s"] = summarize(inner)["p50"]
            row["in_server_overhead_p95_s"] = summarize(inner)["p95"]
            if path == "queue" and "first_request_s" in extras:
                row["first_request_s"] = extras["first_request_s"]
        else:  # PNG encoding is the service's work, not the engine's
            row.update({k: v for k, v in extras.items() if k.startswith("png_")})
        if engine_p50 is not None:
            row["overhead_vs_engine_p50_s"] = round(e2e["p50"] - engine_p50, 4)
            row["overhead_fraction"] = round((e2e["p50"] - engine_p50) / engine_p50, 4)
            row["ratio_vs_engine"] = round(e2e["p50"] / engine_p50, 4)
        rows.append(row)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    png = reference_png()
    reference_pixels = REFERENCE_SIDE * REFERENCE_SIDE
    repeats = {512: args.repeats_512, 1024: args.repeats_1024}
    base_settings = {"FLUX2_REFERENCE_PIXELS": str(reference_pixels)}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flux2-bench-service-") as tmp, LoadMonitor() as load:
        root = Path(tmp)
        cache = root / "cache"
        engine = _make_engine(cache, reference_pixels)
        settings = {**base_settings, "FLUX2_CACHE_DIR": str(cache), "FLUX2_SAFETY_CHECKER": "none"}
        engine_p50: dict[int, float] = {}
        with tiny_server(root / "none", settings) as server:
            for size in args.sizes:
                samples, extras = measure(server.origin, engine, size, repeats[size], png, PATHS)
                engine_p50[size] = summarize(samples["engine"]["e2e"])["p50"]
                rows += rows_for(samples, size, "none", engine_p50[size], extras)
                progress(
                    f"{size}²: "
                    + ", ".join(f"{r['path']} {r['p50_s']:.3f}" for r in rows[-len(PATHS) :])
                )
        del engine  # free its memory before the second server
        if args.nsfw_repeats > 0:
            settings = {**settings, "FLUX2_SAFETY_CHECKER": "opennsfw"}
            with tiny_server(root / "opennsfw", settings) as server:
                for size in args.sizes:
                    samples, extras = measure(
                        server.origin, None, size, args.nsfw_repeats, png, ("queue",), warmup=1
                    )
                    rows += rows_for(samples, size, "opennsfw", engine_p50.get(size), extras)
                    progress(f"{size}² opennsfw: queue {rows[-1]['p50_s']:.3f}")
        load_report = load.report()
    report = run_record(NAME, ("torch", "diffusers", "httpx", "uvicorn", "fastapi", "pillow"))
    report.update(
        {
            "load_during_run": load_report,
            "wall_s": round(time.perf_counter() - started, 1),
            "setup": {
                "model": "tiny (random weights, real FLUX.2 token counts)",
                "schedule": "turbo (8 steps), the default",
                "reference": f"one {REFERENCE_SIDE}x{REFERENCE_SIDE} PNG as a data URI",
                "reference_pixels": reference_pixels,
                "server_settings": "defaults: FLUX2_MAX_BATCH_IMAGES=4, FLUX2_BATCH_WINDOW_MS=10",
                "poll_seconds": POLL_SECONDS,
                "repeats": {str(k): v for k, v in repeats.items() if k in args.sizes},
                "opennsfw_repeats": args.nsfw_repeats,
            },
            "results": rows,
        }
    )
    return report


def summary(report: dict[str, Any]) -> str:
    rows = {(r["safety_checker"], r["size"], r["path"]): r for r in report["results"]}
    parts = []
    for (safety, size, path), row in rows.items():
        if path != "queue" or "ratio_vs_engine" not in row:
            continue
        text = (
            f"{size}² {safety}: queue p50 {row['p50_s']:.3f} s vs engine "
            f"{row['p50_s'] - row['overhead_vs_engine_p50_s']:.3f} s "
            f"(+{row['overhead_vs_engine_p50_s'] * 1000:.0f} ms, x{row['ratio_vs_engine']:.2f})"
        )
        sync = rows.get((safety, size, "sync"))
        if sync is not None and "ratio_vs_engine" in sync:
            text += f", sync x{sync['ratio_vs_engine']:.2f}"
        parts.append(text)
    load = report["load_during_run"].get("mean", "?")
    return "; ".join(parts) + f"; load {load}"


def main() -> int:
    parser = benchmark_parser(__doc__, RESULTS_DIR / "service.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], choices=[512, 1024])
    parser.add_argument("--repeats-512", type=int, default=20)
    parser.add_argument("--repeats-1024", type=int, default=12)
    parser.add_argument(
        "--nsfw-repeats", type=int, default=6, help="queued edits per size with opennsfw (0: skip)"
    )
    run_benchmark(NAME, parser.parse_args(), run, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
