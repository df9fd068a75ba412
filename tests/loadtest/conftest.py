"""Fixtures of the load-test tests: the stub server, the real tiny server, headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from loadtest_helpers import StubServer, running_stub

from benchmarks.common import Server, tiny_server
from tests.helpers.browser import launched_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A scriptable fal-like server over plain http (see loadtest_helpers.StubServer)."""
    with running_stub() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``flux2-edit serve --model tiny`` over plain http, as ``make demo`` runs it, serving only
    the flash edit (an operator's ``FLUX2_ENDPOINTS`` subset: text-to-image answers 404);
    references resized to 128x128 so a CPU edit takes about a second."""
    root = tmp_path_factory.mktemp("loadtest-server")
    settings = {
        "FLUX2_REFERENCE_PIXELS": str(128 * 128),
        "FLUX2_ENDPOINTS": "fal-ai/flux-2/flash/edit",
    }
    with tiny_server(root, settings) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium driven by Playwright (tests/helpers/browser.py)."""
    with launched_chromium() as launched:
        yield launched
