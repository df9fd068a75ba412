"""The two denoising regimes on one set of FLUX.2 [dev] weights, and where the Turbo LoRA is.

``turbo`` (fal's flash and turbo endpoints) runs fal's Turbo LoRA recipe: the LoRA active, the
engine's flash schedule (8 "pre-shifted" sigmas with ``num_inference_steps=8``). ``base`` (fal's
``flux-2``, ``/edit``, ``/lora``, ``/lora/edit``) runs FLUX.2 [dev] itself: diffusers' default
schedule (``linspace(1, 1/N, N)`` re-shifted by ``mu``) with the request's step count
(``BASE_STEPS`` = 28 unless asked), and *without* the Turbo LoRA.

How the Turbo LoRA is held (:func:`turbo_mode`; measured in ``benchmarks/bench_family.py``):

* ``fused`` when the server serves only ``turbo``: merged into the weights at load time and
  unloaded, as before (no per-step cost);
* ``adapter`` when it serves both: loaded once as a PEFT adapter named ``turbo`` and switched
  per batch with diffusers' ``set_adapters`` / ``disable_lora``. Switching costs milliseconds and
  is exact both ways; fusing and unfusing per switch would cost a pass over every targeted weight
  and, in bfloat16, leaves the base weights slightly changed after every unfuse (measured:
  benchmarks/RESULTS.md), so ``base`` would drift away from FLUX.2 [dev];
* ``none`` when there is no Turbo LoRA: allowed only for the tiny test checkpoint. On real
  weights a server with ``turbo`` in its regimes refuses to start without it
  (:func:`require_turbo_lora`), rather than serve 8-step images of an undistilled model.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from pathlib import Path

import numpy as np

from core.errors import InvalidRequest, WeightsError
from pipelines.schedules import FlashSchedule
from pipelines.types import BASE_STEPS, EditRequest, Regime
from weights.manifest import find_lora
from weights.tiny import is_tiny_checkpoint

REGIMES: tuple[Regime, ...] = ("turbo", "base")
TURBO_ADAPTER = "turbo"


class TurboMode(enum.Enum):
    FUSED = "fused"
    ADAPTER = "adapter"
    NONE = "none"


def turbo_lora_path(model_path: Path, explicit: Path | None) -> Path | None:
    """The Turbo LoRA file: ``explicit`` when given (it must exist), else the one ``flux2-edit
    weights download`` put beside the model, else None.

    Raises:
        WeightsError: ``explicit`` does not exist.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"the Turbo LoRA file {path} (FLUX2_LORA_PATH) does not exist")
        # diffusers unpickles any weight_name not ending in .safetensors, use_safetensors or not.
        if path.suffix != ".safetensors":
            raise WeightsError(
                f"the Turbo LoRA file {path} is not a .safetensors file; only those are loaded"
            )
        return path
    return find_lora(Path(model_path))


def turbo_mode(regimes: Collection[Regime], lora: Path | None) -> TurboMode:
    if lora is None or "turbo" not in regimes:
        return TurboMode.NONE
    return TurboMode.ADAPTER if "base" in regimes else TurboMode.FUSED


def require_turbo_lora(
    model_path: Path, regimes: Collection[Regime], schedule: FlashSchedule, lora: Path | None
) -> None:
    """Refuse real weights that would serve the turbo regime without the Turbo LoRA.

    Only a distilled schedule (one with its own sigmas, as ``turbo``) needs it; the tiny test
    checkpoint runs without one.

    Raises:
        WeightsError: naming the two ways to fix it.
    """
    if lora is not None or "turbo" not in regimes or schedule.sigmas is None:
        return
    if is_tiny_checkpoint(model_path):
        return
    raise WeightsError(
        f"the flash/turbo endpoints run fal's {schedule.num_inference_steps}-step Turbo LoRA "
        f"recipe, but no Turbo LoRA was found for {model_path}: fetch it with 'flux2-edit "
        "weights download' (it lands beside the model, in FLUX.2-dev-Turbo/), or set "
        "FLUX2_LORA_PATH to flux.2-turbo-lora.safetensors; or serve only the base endpoints "
        "(FLUX2_ENDPOINTS without the flash/turbo ones)"
    )


def check_regime(
    request: EditRequest, regimes: Collection[Regime], schedule: FlashSchedule
) -> None:
    """Raise :class:`InvalidRequest` for a request this engine does not serve."""
    if request.regime not in regimes:
        raise InvalidRequest(
            f"this server does not serve the {request.regime} regime (it serves "
            f"{', '.join(r for r in REGIMES if r in regimes)})",
            loc=("body",),
            type="value_error",
        )
    if request.regime == "turbo" and request.steps not in (None, schedule.num_inference_steps):
        raise InvalidRequest(
            f"the turbo regime runs its fixed {schedule.num_inference_steps}-step schedule",
            loc=("body", "num_inference_steps"),
            type="value_error",
            input=request.steps,
        )


def sigmas_for(request: EditRequest, schedule: FlashSchedule) -> tuple[int, list[float]]:
    """``(num_inference_steps, sigmas)`` as the request's regime passes them to diffusers.

    ``turbo``: the flash schedule's sigmas *and* its step count (the recipe's call). ``base``:
    ``Flux2Pipeline.__call__``'s own default, ``linspace(1, 1/N, N)``.
    """
    if request.regime == "turbo":
        steps = schedule.num_inference_steps
        if schedule.sigmas is not None:
            return steps, list(schedule.sigmas)
    else:
        steps = request.steps or BASE_STEPS
    return steps, np.linspace(1.0, 1 / steps, steps).tolist()


__all__ = [
    "REGIMES",
    "TURBO_ADAPTER",
    "TurboMode",
    "check_regime",
    "require_turbo_lora",
    "sigmas_for",
    "turbo_lora_path",
    "turbo_mode",
]
