"""Regimes, the Turbo LoRA's place and the step cache's schedule (no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidRequest, WeightsError
from pipelines.acceleration import full_passes, step_cache_config
from pipelines.regimes import (
    TurboMode,
    check_regime,
    require_turbo_lora,
    sigmas_for,
    turbo_lora_path,
    turbo_mode,
)
from pipelines.schedules import SCHEDULES, TURBO_SIGMAS
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest
from weights.manifest import load_manifest
from weights.tiny import TINY_TRANSFORMER, is_tiny_checkpoint

TURBO = SCHEDULES["turbo"]
REAL = {"num_layers": 8, "num_single_layers": 48, "attention_head_dim": 128,
        "num_attention_heads": 48}  # fmt: skip


def checkpoint(root: Path, transformer: dict[str, object]) -> Path:
    model = root / "FLUX.2-dev"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text(json.dumps(transformer))
    return model


def request(**fields: object) -> EditRequest:
    base: dict[str, object] = {
        "request_id": "r",
        "prompt": "a cat",
        "images": (Image.new("RGB", (64, 64)),),
        "size": ImageSize(64, 64),
        "seed": 1,
    }
    return EditRequest(**{**base, **fields})  # type: ignore[arg-type]


def test_the_turbo_lora_is_fused_only_when_turbo_is_all_the_server_serves() -> None:
    lora = Path("turbo.safetensors")
    assert turbo_mode({"turbo"}, lora) is TurboMode.FUSED
    assert turbo_mode({"turbo", "base"}, lora) is TurboMode.ADAPTER
    assert turbo_mode({"base"}, lora) is TurboMode.NONE
    assert turbo_mode({"turbo", "base"}, None) is TurboMode.NONE


def test_the_tiny_checkpoint_is_told_apart_from_real_weights(tmp_path: Path) -> None:
    assert is_tiny_checkpoint(checkpoint(tmp_path / "a", dict(TINY_TRANSFORMER)))
    assert not is_tiny_checkpoint(checkpoint(tmp_path / "b", REAL))
    assert not is_tiny_checkpoint(tmp_path / "nothing")


def test_real_weights_refuse_turbo_without_the_lora_and_say_how_to_fix_it(tmp_path: Path) -> None:
    real = checkpoint(tmp_path, REAL)
    with pytest.raises(WeightsError) as caught:
        require_turbo_lora(real, {"turbo", "base"}, TURBO, None)
    for fix in ("flux2-edit weights download", "FLUX2_LORA_PATH", "FLUX2_ENDPOINTS"):
        assert fix in caught.value.message
    require_turbo_lora(real, {"base"}, TURBO, None)  # the base endpoints need no Turbo LoRA
    require_turbo_lora(real, {"turbo"}, SCHEDULES["dev-28"], None)  # not a distilled schedule
    require_turbo_lora(real, {"turbo"}, TURBO, tmp_path / "turbo.safetensors")
    tiny = checkpoint(tmp_path / "tiny", dict(TINY_TRANSFORMER))
    require_turbo_lora(tiny, {"turbo"}, TURBO, None)  # the test checkpoint runs without


def test_the_turbo_lora_is_found_beside_a_downloaded_model_or_given(tmp_path: Path) -> None:
    model = checkpoint(tmp_path, REAL)
    assert turbo_lora_path(model, None) is None
    beside = load_manifest().lora_file(tmp_path)
    beside.parent.mkdir(parents=True)
    beside.write_bytes(b"x")
    assert turbo_lora_path(model, None) == beside
    given = tmp_path / "mine.safetensors"
    given.write_bytes(b"x")
    assert turbo_lora_path(model, given) == given
    with pytest.raises(WeightsError, match="FLUX2_LORA_PATH"):
        turbo_lora_path(model, tmp_path / "missing.safetensors")


def test_each_regime_passes_its_own_schedule() -> None:
    steps, sigmas = sigmas_for(request(), TURBO)
    assert (steps, sigmas) == (8, list(TURBO_SIGMAS))
    steps, sigmas = sigmas_for(request(regime="base"), TURBO)
    assert steps == 28 and sigmas == pytest.approx(np.linspace(1, 1 / 28, 28).tolist(), abs=0)
    steps, sigmas = sigmas_for(request(regime="base", steps=12), TURBO)
    assert steps == 12 and len(sigmas) == 12 and sigmas[-1] == pytest.approx(1 / 12)


def test_requests_outside_the_served_regimes_are_refused() -> None:
    check_regime(request(regime="base", steps=12), {"turbo", "base"}, TURBO)
    check_regime(request(steps=8), {"turbo"}, TURBO)
    with pytest.raises(InvalidRequest, match="does not serve the base regime"):
        check_regime(request(regime="base"), {"turbo"}, TURBO)
    with pytest.raises(InvalidRequest, match="fixed 8-step") as caught:
        check_regime(request(steps=12), {"turbo", "base"}, TURBO)
    assert caught.value.problems[0].loc == ("body", "num_inference_steps")


def test_the_step_cache_runs_15_full_passes_of_28() -> None:
    assert full_passes(28) == 15
    assert full_passes(8) == 8  # too short to cache anything
    config = step_cache_config(28)
    assert (config.cache_interval, config.disable_cache_before_step) == (3, 6)
    assert config.disable_cache_after_step == 26 and config.use_lite_mode
