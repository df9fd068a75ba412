"""An in-process server (the real app and worker around the instant fake engine) on a loopback
port, for the official ``openai`` SDK, which talks HTTP to a base URL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai_helpers import ALICE, BOB, LIMITS

from pipelines.safety import AlwaysFlagChecker
from tests.helpers.services import fake_components, serving


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's origin; keys ``alice-key`` and ``bob-key``."""
    parts = fake_components(tmp_path_factory.mktemp("openai"), api_keys=f"{ALICE},{BOB}", **LIMITS)
    with serving(parts) as running:
        yield running


@pytest.fixture(scope="module")
def flagging_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose safety checker flags every image (no keys)."""
    parts = fake_components(tmp_path_factory.mktemp("flagging"), safety=AlwaysFlagChecker)
    with serving(parts) as running:
        yield running
