"""Flash step schedules: named, few-step sigma schedules for the distilled FLUX.2 [dev].

The default, ``turbo``, is the published recipe of fal's ``FLUX.2-dev-Turbo`` LoRA: 8 steps with
"pre-shifted" sigmas, passed *together with* ``num_inference_steps=8`` and guidance 2.5. diffusers
re-shifts custom sigmas with ``mu`` computed from ``num_inference_steps``
(docs/reference/flux2-diffusers.md §2.4), so leaving ``num_inference_steps`` out would change the
schedule: we copy the recipe's call exactly.

A schedule can also be given as text (``FLUX2_SCHEDULE``): a name from :data:`SCHEDULES`, or
comma-separated sigmas such as ``1.0,0.6,0.3,0.05`` (strictly decreasing, in (0, 1]), which
run ``len(sigmas)`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError

TURBO_SIGMAS = (1.0, 0.6509, 0.4374, 0.2932, 0.1893, 0.1108, 0.0495, 0.00031)


@dataclass(frozen=True)
class FlashSchedule:
    name: str
    sigmas: tuple[float, ...] | None
    num_inference_steps: int
    default_guidance: float = 2.5

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ConfigError(f"schedule {self.name!r}: num_inference_steps must be at least 1")
        if self.sigmas is not None:
            if len(self.sigmas) != self.num_inference_steps:
                raise ConfigError(
                    f"schedule {self.name!r}: {len(self.sigmas)} sigmas for "
                    f"{self.num_inference_steps} steps"
                )
            if not all(0.0 < s <= 1.0 for s in self.sigmas):
                raise ConfigError(f"schedule {self.name!r}: sigmas must lie in (0, 1]")
            if any(b >= a for a, b in zip(self.sigmas, self.sigmas[1:], strict=False)):
                raise ConfigError(f"schedule {self.name!r}: sigmas must strictly decrease")


SCHEDULES: dict[str, FlashSchedule] = {
    "turbo": FlashSchedule("turbo", TURBO_SIGMAS, 8),
    # Plain FLUX.2 [dev] (no distillation), for comparisons: diffusers' default linear sigmas.
    "dev-28": FlashSchedule("dev-28", None, 28, default_guidance=4.0),
    "dev-50": FlashSchedule("dev-50", None, 50, default_guidance=4.0),
}
DEFAULT_SCHEDULE = "turbo"


def parse_schedule(spec: str) -> FlashSchedule:
    """A schedule from its name or from comma-separated sigmas."""
    spec = spec.strip()
    if spec in SCHEDULES:
        return SCHEDULES[spec]
    if "," in spec or _is_float(spec):
        try:
            sigmas = tuple(float(part) for part in spec.split(",") if part.strip())
        except ValueError as exc:
            raise ConfigError(f"not a list of sigmas: {spec!r}") from exc
        return FlashSchedule(f"custom-{len(sigmas)}", sigmas, len(sigmas))
    raise ConfigError(
        f"unknown schedule {spec!r}: use one of {', '.join(SCHEDULES)} or comma-separated sigmas"
    )


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
