"""Every engine setting reaches the FLUX.2 engine's configuration (``service.engines``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.flux2 import Flux2EngineConfig
from pipelines.schedules import parse_schedule
from service.engines import engine_config
from service.settings import Settings

CHECKPOINT = Path("/models/flux2-dev")


def test_defaults_leave_every_fast_path_off() -> None:
    config = engine_config(Settings().engine, CHECKPOINT)
    assert config.model_path == CHECKPOINT
    assert config.memory_profile == "auto"
    assert config.attention_backend is None
    assert config.fuse_qkv is False
    assert config.compile_blocks is False
    assert config.quantize is None
    assert config.allow_prompt_expansion is True


def test_each_setting_is_passed_on() -> None:
    settings = Settings(
        device="cuda:1",
        dtype="bfloat16",
        lora_path=Path("/models/turbo.safetensors"),
        lora_scale=0.75,
        schedule="dev-28",
        reference_pixels=512 * 512,
        prompt_cache_mb=3,
        memory_profile="offload_text_encoder",
        attention_backend="_flash_3",
        fuse_qkv=True,
        compile_blocks=True,
        quantize="fp8",
        allow_prompt_expansion=False,
    )
    config = engine_config(settings.engine, CHECKPOINT)
    assert dataclasses.asdict(config) == dataclasses.asdict(
        Flux2EngineConfig(
            model_path=CHECKPOINT,
            device="cuda:1",
            dtype="bfloat16",
            lora_path=Path("/models/turbo.safetensors"),
            lora_scale=0.75,
            schedule=parse_schedule("dev-28"),
            reference_pixels=512 * 512,
            prompt_cache_bytes=3 * 1024 * 1024,
            memory_profile="offload_text_encoder",
            attention_backend="_flash_3",
            fuse_qkv=True,
            compile_blocks=True,
            quantize="fp8",
            allow_prompt_expansion=False,
        )
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_profile", "huge"), ("quantize", "int4"), ("fuse_qkv", "perhaps")],
)
def test_bad_values_are_refused_when_read(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


def test_environment_variables_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX2_MEMORY_PROFILE", "model_offload")
    monkeypatch.setenv("FLUX2_ALLOW_PROMPT_EXPANSION", "false")
    monkeypatch.setenv("FLUX2_ATTENTION_BACKEND", "auto")
    config = engine_config(Settings().engine, CHECKPOINT)
    assert config.memory_profile == "model_offload"
    assert config.allow_prompt_expansion is False
    assert config.attention_backend == "auto"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device", "gpu"),
        ("device", "cuda:x"),
        ("attention_backend", "flash_attn_9"),
        ("safety_checker", "always"),  # the flag-everything fake is for tests, not deployments
        ("safety_checker", "nudenet"),
    ],
)
def test_names_are_checked_when_settings_are_read(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_that_work(device: str) -> None:
    assert Settings(device=device).engine.device == device


def test_attention_backends_are_exactly_those_of_the_installed_diffusers() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    from pipelines.options import ATTENTION_BACKENDS

    assert set(ATTENTION_BACKENDS) == {"auto"} | {backend.value for backend in AttentionBackendName}
