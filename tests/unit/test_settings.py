"""Settings: defaults, FLUX2_* environment and keyword overrides (service/settings.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FLUX2_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_defaults(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.engine.model is None
    assert settings.storage.cache_dir == tmp_path / "home" / ".cache" / "flux2-edit"
    assert settings.engine.device == "auto"
    assert settings.engine.dtype == "auto"
    assert settings.engine.lora_path is None
    assert settings.engine.lora_scale == 1.0
    assert settings.engine.schedule == "turbo"
    assert settings.engine.reference_pixels == 1024 * 1024
    assert settings.http.host == "127.0.0.1"
    assert settings.http.port == 8000
    assert settings.observability.log_level == "info"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLUX2_MODEL", "tiny")
    monkeypatch.setenv("FLUX2_SCHEDULE", "dev-28")
    monkeypatch.setenv("FLUX2_REFERENCE_PIXELS", str(512 * 512))
    monkeypatch.setenv("FLUX2_PORT", "9123")
    monkeypatch.setenv("FLUX2_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FLUX2_LORA_PATH", str(tmp_path / "turbo.safetensors"))
    monkeypatch.setenv("FLUX2_LORA_SCALE", "0.5")
    monkeypatch.setenv("FLUX2_DTYPE", "bfloat16")
    monkeypatch.setenv("FLUX2_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.engine.model == "tiny"
    assert settings.engine.schedule == "dev-28"
    assert settings.engine.reference_pixels == 512 * 512
    assert settings.http.port == 9123
    assert settings.storage.cache_dir == tmp_path / "cache"
    assert settings.engine.lora_path == tmp_path / "turbo.safetensors"
    assert settings.engine.lora_scale == 0.5
    assert settings.engine.dtype == "bfloat16"
    assert settings.observability.log_level == "debug"


def test_environment_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("flux2_port", "9001")
    assert Settings().http.port == 9001


def test_custom_sigmas_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX2_SCHEDULE", "1.0,0.5,0.1")
    assert Settings().engine.schedule == "1.0,0.5,0.1"


def test_keyword_arguments_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX2_MODEL", "tiny")
    monkeypatch.setenv("FLUX2_PORT", "9123")
    monkeypatch.setenv("FLUX2_SCHEDULE", "dev-50")
    settings = Settings(model="/models/FLUX.2-dev", port=8080)
    assert settings.engine.model == "/models/FLUX.2-dev"
    assert settings.http.port == 8080
    assert settings.engine.schedule == "dev-50"  # not given: the environment fills it


@pytest.mark.parametrize("schedule", ["warp", "1.0,2.0", "0.1,0.5"])
def test_bad_schedule_keyword(schedule: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        Settings(schedule=schedule)
    (error,) = exc_info.value.errors()
    assert error["loc"] == ("schedule",)


def test_bad_schedule_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX2_SCHEDULE", "warp")
    with pytest.raises(ValidationError, match="unknown schedule"):
        Settings()


def test_bad_dtype() -> None:
    with pytest.raises(ValidationError) as exc_info:
        Settings(dtype="float64")  # type: ignore[arg-type]
    assert exc_info.value.errors()[0]["loc"] == ("dtype",)


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(port: int) -> None:
    with pytest.raises(ValidationError) as exc_info:
        Settings(port=port)
    assert exc_info.value.errors()[0]["loc"] == ("port",)


def test_port_out_of_range_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX2_PORT", "70000")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize("pixels", [64 * 64 - 1, 2048 * 2048 + 1])
def test_reference_pixels_bounds(pixels: int) -> None:
    with pytest.raises(ValidationError):
        Settings(reference_pixels=pixels)
    assert Settings(reference_pixels=64 * 64).engine.reference_pixels == 64 * 64
    assert Settings(reference_pixels=2048 * 2048).engine.reference_pixels == 2048 * 2048


def test_bad_log_level() -> None:
    with pytest.raises(ValidationError):
        Settings(log_level="verbose")  # type: ignore[arg-type]


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc_info:
        Settings(modle="tiny")  # type: ignore[call-arg]
    assert exc_info.value.errors()[0]["type"] == "extra_forbidden"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.http.port = 1
    assert settings.http.port == 8000


@pytest.mark.parametrize(
    "name", ["REDIS_URL", "ATTENTION_BACKEND", "QUANTIZE", "METRICS_PORT", "MODEL", "PUBLIC_URL"]
)
def test_an_empty_variable_leaves_an_optional_setting_unset(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Compose files write unset variables as empty strings (``FLUX2_REDIS_URL=``)."""
    monkeypatch.setenv(f"FLUX2_{name}", "")
    assert Settings().option(name.lower()) is None


def test_an_empty_variable_keeps_its_meaning_where_empty_is_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLUX2_CORS_ORIGINS", "")  # no browser origins, not the default "*"
    monkeypatch.setenv("FLUX2_API_KEYS", "")
    settings = Settings()
    assert (settings.http.cors_origins, settings.http.api_keys) == ("", "")
