"""Output encoding at 1024²: Pillow's PNG, JPEG and WebP options, time and size.

Usage: ``.venv/bin/python -m benchmarks.bench_outputs`` → ``benchmarks/results/outputs-cpu.json``.
The picture is synthetic but photo-like (smooth gradients, shapes, mild grain): pure noise would
be the worst case for every codec and tell nothing about real edits.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter

OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("PNG", {"compress_level": 1}),
    ("PNG", {"compress_level": 3}),
    ("PNG", {"compress_level": 6}),  # Pillow's default
    ("PNG", {"compress_level": 9}),
    ("JPEG", {"quality": 95}),
    ("JPEG", {"quality": 95, "optimize": True}),
    ("JPEG", {"quality": 90}),
    ("WEBP", {"quality": 90, "method": 0}),
    ("WEBP", {"quality": 90, "method": 2}),
    ("WEBP", {"quality": 90, "method": 4}),  # Pillow's default method
    ("WEBP", {"quality": 95, "method": 2}),
    ("WEBP", {"quality": 95, "method": 4}),
]


def picture(size: int = 1024) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x * 220 + 20, y * 180 + 40, (1 - x) * 160 + 60], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 6, rgb.shape)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        box = (60 * i, 40 + 50 * i, 60 * i + 260, 240 + 50 * i)
        draw.ellipse(box, fill=(255 - 18 * i, 40 + 15 * i, 90 + 10 * i))
    return image.filter(ImageFilter.GaussianBlur(1.2))


def measure(image: Image.Image, fmt: str, options: dict[str, Any], repeats: int) -> dict[str, Any]:
    times, size = [], 0
    for _ in range(repeats):
        buffer = io.BytesIO()
        started = time.perf_counter()
        image.save(buffer, format=fmt, **options)
        times.append(time.perf_counter() - started)
        size = buffer.tell()
    return {"format": fmt, "options": options, "median_ms": statistics.median(times) * 1000,
            "bytes": size}  # fmt: skip


def four_images(image: Image.Image, repeats: int = 5) -> list[dict[str, Any]]:
    """A ``num_images=4`` job with the service's own encoders: one after another, and on four
    threads as the worker does (Pillow releases the GIL while it encodes)."""
    from concurrent.futures import ThreadPoolExecutor

    from service.outputs import OutputFormat, encode_image

    rows = []
    images = [image.copy() for _ in range(4)]
    for fmt in (OutputFormat.PNG, OutputFormat.WEBP, OutputFormat.JPEG):
        times: dict[str, list[float]] = {"sequential": [], "4 threads": []}
        with ThreadPoolExecutor(4) as pool:
            for _ in range(repeats):
                started = time.perf_counter()
                for item in images:
                    encode_image(item, fmt)
                times["sequential"].append(time.perf_counter() - started)
                started = time.perf_counter()
                list(pool.map(encode_image, images, [fmt] * len(images)))
                times["4 threads"].append(time.perf_counter() - started)
        for how, values in times.items():
            rows.append(
                {"format": fmt.value, "how": how, "median_ms": statistics.median(values) * 1000}
            )
    return rows


def main() -> None:
    image = picture()
    rows = [measure(image, fmt, options, repeats=7) for fmt, options in OPTIONS]
    parallel = four_images(image)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    report = {"git_sha": sha, "machine": platform.machine(), "pillow": PIL.__version__,
              "size": "1024x1024", "cpu_count": os.cpu_count(), "results": rows,
              "four_images": parallel}  # fmt: skip
    out = Path("benchmarks/results/outputs-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"{row['format']:5} {json.dumps(row['options']):40} "
              f"{row['median_ms']:7.1f} ms {row['bytes'] / 1024:8.0f} KiB")  # fmt: skip
    for row in parallel:
        print(f"4 x {row['format']:5} {row['how']:10} {row['median_ms']:7.1f} ms")


if __name__ == "__main__":
    main()
