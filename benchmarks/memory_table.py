"""The layouts table of ``docs/operations.md``: what fits 1, 2, 4 and 8 GPUs of 24-141 GB.

Computed, not measured: the memory planner (``pipelines/memory.py``) applied to FLUX.2 [dev]'s
component sizes (``FLUX2_DEV``), each GPU counted as its marketed size in 10⁹ bytes, all free.
One GPU: the fastest profile that fits. Several: each layout whose every rank fits, with the text
encoder on rank 0's GPU when it fits there too, else on its CPU; the figure is rank 0's need (it
holds the VAE and the prompt cache besides its transformer share). ``tests/unit/`` checks the docs
carry exactly this table::

    .venv/bin/python -m benchmarks.memory_table
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.layout import ParallelLayout
from pipelines.memory import (
    FLUX2_DEV,
    GB,
    ComponentSizes,
    MemoryProfile,
    gpu_need,
    plan,
    plan_group,
)

GPU_COUNTS = (1, 2, 4, 8)
GPU_SIZES_GB = (24, 48, 80, 141)
PROMPT_CACHE_BYTES = 512 * 1024 * 1024  # FLUX2_PROMPT_CACHE_MB's default, on rank 0's GPU
_WHERE = {
    MemoryProfile.RESIDENT: "text encoder on GPU 0",
    MemoryProfile.OFFLOAD_TEXT_ENCODER: "text encoder on the CPU",
}


def one_gpu(size_gb: int, sizes: ComponentSizes) -> str:
    chosen = plan(size_gb * GB, sizes, extra_bytes=PROMPT_CACHE_BYTES)
    if not chosen.fits:
        need = gpu_need(MemoryProfile.MODEL_OFFLOAD, sizes, extra_bytes=PROMPT_CACHE_BYTES)
        return f"nothing (`model_offload` needs {need / GB:.0f} GB)"
    return f"`{chosen.profile.value}`, {chosen.need_bytes / GB:.1f} GB"


def several(count: int, size_gb: int, sizes: ComponentSizes) -> str:
    fitting = []
    for kind in ("ulysses", "tp"):
        layout = ParallelLayout(kind, count)
        chosen = plan_group([size_gb * GB] * count, sizes, layout, extra_bytes=PROMPT_CACHE_BYTES)
        if chosen.fits:
            first = chosen.ranks[0].total / GB
            fitting.append(f"`{layout}`, {_WHERE[chosen.profile]}, {first:.1f} GB")
    return "<br>".join(fitting) if fitting else "nothing"


def table(
    sizes: ComponentSizes = FLUX2_DEV,
    counts: Sequence[int] = GPU_COUNTS,
    sizes_gb: Sequence[int] = GPU_SIZES_GB,
) -> str:
    """The Markdown table (computed from ``sizes``)."""
    lines = [
        "| GPUs | " + " | ".join(f"{gb} GB each" for gb in sizes_gb) + " |",
        "|---|" + "---|" * len(sizes_gb),
    ]
    for count in counts:
        cells = [one_gpu(gb, sizes) if count == 1 else several(count, gb, sizes) for gb in sizes_gb]
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
