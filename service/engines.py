"""Builds the engine the settings ask for. torch is imported here lazily, never at import time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError
from pipelines.schedules import parse_schedule
from service.settings import Settings

if TYPE_CHECKING:
    from pipelines.flux2 import Flux2EngineConfig
    from pipelines.protocol import EditEngine

TINY = "tiny"


def resolve_model_path(settings: Settings, progress: Callable[[str], None] | None = None) -> Path:
    """The local checkpoint directory for ``settings.model``; builds the tiny one on first use."""
    if settings.model is None:
        raise ConfigError("no model given: pass --model PATH|tiny or set FLUX2_MODEL")
    if settings.model == TINY:
        from weights.tiny import ensure_tiny_checkpoint

        if progress is not None:
            progress("using the tiny random-weight FLUX.2 checkpoint")
        return ensure_tiny_checkpoint(settings.cache_dir / "models")
    return Path(settings.model).expanduser()


def engine_config(settings: Settings, model_path: Path) -> Flux2EngineConfig:
    """The FLUX.2 engine configuration ``settings`` describe, for the checkpoint ``model_path``."""
    from pipelines.flux2 import Flux2EngineConfig

    return Flux2EngineConfig(
        model_path=model_path,
        device=settings.device,
        dtype=settings.dtype,
        lora_path=settings.lora_path,
        lora_scale=settings.lora_scale,
        schedule=parse_schedule(settings.schedule),
        reference_pixels=settings.reference_pixels,
        prompt_cache_bytes=settings.prompt_cache_mb * 1024 * 1024,
        memory_profile=settings.memory_profile,
        attention_backend=settings.attention_backend,
        fuse_qkv=settings.fuse_qkv,
        compile_blocks=settings.compile_blocks,
        quantize=settings.quantize,
        allow_prompt_expansion=settings.allow_prompt_expansion,
    )


def create_engine(settings: Settings, progress: Callable[[str], None] | None = None) -> EditEngine:
    """A loaded FLUX.2 engine for ``settings`` (weights read from local disk only)."""
    from pipelines.flux2 import Flux2Engine, quiet_libraries

    quiet_libraries()
    engine = Flux2Engine(engine_config(settings, resolve_model_path(settings, progress)))
    if progress is not None:
        progress(f"loading FLUX.2 from {engine.config.model_path}")
    engine.load()
    return engine
