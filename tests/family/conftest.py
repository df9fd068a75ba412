"""Fixtures for the FLUX.2 family tests: one in-process app (fake engine) per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from pipelines.fake import FakeEngine
from service.bootstrap import build_app
from tests.helpers.services import fake_components


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    """The fake engine the module's app runs (it records every sub-batch)."""
    return FakeEngine(num_steps=4)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, engine: FakeEngine) -> Iterator[TestClient]:
    """The app with every endpoint, its worker on ``engine``."""
    root: Path = tmp_path_factory.mktemp("family")
    parts = fake_components(root, engine=lambda: engine)
    with TestClient(build_app(parts)) as running:
        yield running
