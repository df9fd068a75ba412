"""fal's ``acceleration`` levels for the base regime, and the step cache behind ``high``.

* ``none``: the exact diffusers computation. The one fast path that can be switched per batch and
  is not bit-exact, a non-default attention backend, is set back to diffusers' default (PyTorch
  SDPA) for that batch. Fast paths that change how the weights are held (fused QKV, fp8,
  compiled blocks) stay on for every batch: they are the operator's choice for the whole server
  and cannot be undone per batch.
* ``regular``: the fast paths the operator enabled (``FLUX2_ATTENTION_BACKEND``,
  ``FLUX2_FUSE_QKV``, ``FLUX2_COMPILE_BLOCKS``, ``FLUX2_QUANTIZE``), nothing else.
* ``high``: ``regular`` plus step caching with diffusers' own TaylorSeer hooks
  (``transformer.enable_cache(TaylorSeerCacheConfig(...))`` inside a ``cache_context``).

Why TaylorSeer, and why the "lite" form: of the cache hooks diffusers 0.42.1 offers,
FirstBlockCache fails on FLUX.2's blocks, MagCache needs per-model calibration, and the
threshold caches (FirstBlock, Sea, Mag) decide per *batch* whether to skip a step, so a
request's pixels would depend on what it was batched with. TaylorSeer decides by step index
alone and extrapolates every row from that row's own history, so a request gets the same image
whatever shares its batch. The lite form caches only ``proj_out`` and skips every transformer
block on cached steps (a whole-model skip, as OpenVINO GenAI's TaylorSeer Lite), with
OpenVINO's defaults: a full pass on the first 6 steps, then every 3rd, and on the last 2. At 28
steps that is 15 full passes of 28 (quality and speed in ``benchmarks/RESULTS.md``). The hooks
are put on for a batch and taken off after it, so other batches run the plain model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from pipelines.types import Acceleration

#: Full transformer passes before caching starts, between them, and at the end.
WARMUP_STEPS = 6
CACHE_INTERVAL = 3
COOLDOWN_STEPS = 2
DEFAULT_BACKEND = "native"


def step_cache_config(steps: int) -> Any:
    """The TaylorSeer Lite configuration ``high`` uses for a run of ``steps`` steps."""
    from diffusers.hooks import TaylorSeerCacheConfig

    return TaylorSeerCacheConfig(
        cache_interval=CACHE_INTERVAL,
        disable_cache_before_step=WARMUP_STEPS,
        disable_cache_after_step=max(WARMUP_STEPS, steps - COOLDOWN_STEPS),
        max_order=1,
        taylor_factors_dtype=torch.float32,
        use_lite_mode=True,
    )


def full_passes(steps: int) -> int:
    """How many of ``steps`` steps run the whole transformer under :func:`step_cache_config`
    (the step schedule of diffusers' ``TaylorSeerCacheHook``)."""
    after = max(WARMUP_STEPS, steps - COOLDOWN_STEPS)
    return sum(
        1
        for step in range(steps)
        if step < WARMUP_STEPS or (step - WARMUP_STEPS - 1) % CACHE_INTERVAL == 0 or step >= after
    )


@contextlib.contextmanager
def step_cache(transformer: Any, steps: int) -> Iterator[None]:
    """TaylorSeer Lite hooks on ``transformer`` for one denoising loop of ``steps`` steps."""
    transformer.enable_cache(step_cache_config(steps))
    try:
        with transformer.cache_context("cond"):
            yield
    finally:
        transformer.disable_cache()


@contextlib.contextmanager
def default_attention(transformer: Any, backend: str | None) -> Iterator[None]:
    """diffusers' default attention for the duration (``acceleration: none``), when the engine
    runs another backend."""
    if backend in (None, DEFAULT_BACKEND):
        yield
        return
    transformer.set_attention_backend(DEFAULT_BACKEND)
    try:
        yield
    finally:
        transformer.set_attention_backend(backend)


@contextlib.contextmanager
def accelerated(
    transformer: Any, level: Acceleration, steps: int, attention_backend: str | None
) -> Iterator[bool]:
    """The denoising loop's surroundings for ``level``; yields whether steps are cached (then
    the loop must keep every row until its end: cached predictions have the batch's shape)."""
    if level == "none":
        with default_attention(transformer, attention_backend):
            yield False
    elif level == "high":
        with step_cache(transformer, steps):
            yield True
    else:
        yield False


__all__ = [
    "CACHE_INTERVAL",
    "WARMUP_STEPS",
    "accelerated",
    "default_attention",
    "full_passes",
    "step_cache",
    "step_cache_config",
]
