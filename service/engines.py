"""Builds the engine the settings ask for. torch is imported here lazily, never at import time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigError
from pipelines.schedules import parse_schedule
from service.endpoints import regimes_of
from service.settings import EngineSettings, Settings

if TYPE_CHECKING:
    from pipelines.flux2 import Flux2EngineConfig
    from pipelines.parallel import ParallelEngine
    from pipelines.protocol import EditEngine
    from pipelines.types import Regime

TINY = "tiny"


def resolve_model_path(settings: Settings, progress: Callable[[str], None] | None = None) -> Path:
    """The local checkpoint directory for ``settings.engine.model``; builds the tiny one (into
    ``cache_dir``) on first use."""
    model = settings.engine.model
    if model is None:
        raise ConfigError("no model given: pass --model PATH|tiny or set FLUX2_MODEL")
    if model == TINY:
        from weights.tiny import ensure_tiny_checkpoint

        if progress is not None:
            progress("using the tiny random-weight FLUX.2 checkpoint")
        return ensure_tiny_checkpoint(settings.storage.cache_dir / "models")
    return Path(model).expanduser()


def engine_config(
    engine: EngineSettings,
    model_path: Path,
    regimes: frozenset[Regime] = frozenset({"turbo", "base"}),
) -> Flux2EngineConfig:
    """The FLUX.2 engine configuration the engine settings describe, for ``model_path`` and the
    ``regimes`` the enabled endpoints need (:func:`service.endpoints.regimes_of`).

    The one place engine settings become the engine's own configuration (the engine, a lower
    layer, does not know the service's settings)."""
    from pipelines.flux2 import Flux2EngineConfig

    return Flux2EngineConfig(
        model_path=model_path,
        regimes=regimes,
        device=engine.device,
        dtype=engine.dtype,
        lora_path=engine.lora_path,
        lora_scale=engine.lora_scale,
        schedule=parse_schedule(engine.schedule),
        reference_pixels=engine.reference_pixels,
        prompt_cache_bytes=engine.prompt_cache_mb * 1024 * 1024,
        adapter_cache_bytes=engine.adapter_cache_mb * 1024 * 1024,
        memory_profile=engine.memory_profile,
        attention_backend=engine.attention_backend,
        fuse_qkv=engine.fuse_qkv,
        compile_blocks=engine.compile_blocks,
        quantize=engine.quantize,
        allow_prompt_expansion=engine.allow_prompt_expansion,
    )


def create_engine(settings: Settings, progress: Callable[[str], None] | None = None) -> EditEngine:
    """A loaded FLUX.2 engine for ``settings`` (weights read from local disk only): one process,
    or a group of rank processes with ``parallel`` set."""
    from pipelines.flux2 import Flux2Engine, quiet_libraries
    from pipelines.layout import parse_gpus, parse_layout

    quiet_libraries()
    regimes = regimes_of(settings.serving.enabled())
    config = engine_config(settings.engine, resolve_model_path(settings, progress), regimes)
    layout = parse_layout(settings.engine.parallel)
    engine: Flux2Engine | ParallelEngine
    if layout is None:
        engine = Flux2Engine(config)
    else:
        from pipelines.parallel import ParallelEngine

        engine = ParallelEngine(config, layout, gpus=parse_gpus(settings.engine.gpus))
    if progress is not None:
        where = f" on {layout.degree} ranks ({layout})" if layout is not None else ""
        progress(f"loading FLUX.2 from {config.model_path}{where}")
    engine.load()
    return engine
