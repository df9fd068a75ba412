"""Flash step schedules (pipelines/schedules.py)."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from pipelines.schedules import (
    DEFAULT_SCHEDULE,
    SCHEDULES,
    TURBO_SIGMAS,
    FlashSchedule,
    parse_schedule,
)

TURBO = [1.0, 0.6509, 0.4374, 0.2932, 0.1893, 0.1108, 0.0495, 0.00031]


def test_default_is_turbo() -> None:
    assert DEFAULT_SCHEDULE == "turbo"
    assert parse_schedule(DEFAULT_SCHEDULE) is SCHEDULES["turbo"]


def test_turbo_is_the_published_recipe() -> None:
    turbo = parse_schedule("turbo")
    assert turbo.name == "turbo"
    assert turbo.num_inference_steps == 8
    assert turbo.sigmas is not None
    assert list(turbo.sigmas) == TURBO
    assert list(TURBO_SIGMAS) == TURBO
    assert turbo.default_guidance == 2.5


@pytest.mark.parametrize(("name", "steps"), [("dev-28", 28), ("dev-50", 50)])
def test_dev_schedules_use_default_sigmas(name: str, steps: int) -> None:
    schedule = parse_schedule(name)
    assert schedule.name == name
    assert schedule.sigmas is None
    assert schedule.num_inference_steps == steps
    assert schedule.default_guidance == 4.0


def test_name_is_stripped() -> None:
    assert parse_schedule("  turbo\n") is SCHEDULES["turbo"]


@pytest.mark.parametrize(
    ("spec", "sigmas"),
    [
        ("1.0,0.6,0.3,0.05", (1.0, 0.6, 0.3, 0.05)),
        (" 1, 0.5 , 0.1 ", (1.0, 0.5, 0.1)),
        ("1.0,0.5,", (1.0, 0.5)),
        ("0.7", (0.7,)),
    ],
)
def test_comma_separated_sigmas(spec: str, sigmas: tuple[float, ...]) -> None:
    schedule = parse_schedule(spec)
    assert schedule.sigmas == sigmas
    assert schedule.num_inference_steps == len(sigmas)
    assert schedule.name == f"custom-{len(sigmas)}"
    assert schedule.default_guidance == 2.5


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("warp", "unknown schedule"),
        ("", "unknown schedule"),
        ("Turbo", "unknown schedule"),
        ("1.0,0.5,0.5", "strictly decrease"),
        ("0.1,0.5,1.0", "strictly decrease"),
        ("1.5,0.5", "(0, 1]"),
        ("1.0,0.5,0.0", "(0, 1]"),
        ("1.0,-0.5", "(0, 1]"),
        ("nan", "(0, 1]"),
        ("inf", "(0, 1]"),
        ("1.0,abc", "not a list of sigmas"),
        ("1.0;0.5", "unknown schedule"),
        (",", "at least 1"),
    ],
)
def test_rejected_specs_raise_config_error(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc_info:
        parse_schedule(spec)
    assert fragment in exc_info.value.message
    assert exc_info.value.code == "config_error"


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as exc_info:
        parse_schedule("warp")
    for name in SCHEDULES:
        assert name in exc_info.value.message


def test_schedule_checks_its_own_length() -> None:
    with pytest.raises(ConfigError, match="2 sigmas for 3 steps"):
        FlashSchedule("odd", (1.0, 0.5), 3)
    with pytest.raises(ConfigError, match="at least 1"):
        FlashSchedule("none", None, 0)


def test_schedules_are_frozen() -> None:
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        SCHEDULES["turbo"].num_inference_steps = 4  # type: ignore[misc]
