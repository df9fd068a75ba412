"""Shared fixtures: the offline tiny FLUX.2 checkpoint, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built tiny random-weight FLUX.2 checkpoint (real classes, diffusers layout)."""
    from weights.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "flux2-tiny")
