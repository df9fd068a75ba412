"""Fixtures for the upload tests: the real app and worker around the instant fake engine."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from upload_helpers import MakeClient

from service.bootstrap import Components, build_app
from tests.helpers.services import fake_components


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[MakeClient]:
    """``make(**settings)``: a started app (``serve``: API and worker) and its components."""
    stack = ExitStack()
    counter = itertools.count()

    def make(**settings: Any) -> tuple[TestClient, Components]:
        parts = fake_components(tmp_path / f"service{next(counter)}", **settings)
        client = stack.enter_context(TestClient(build_app(parts)))
        return client, parts

    with stack:
        yield make
