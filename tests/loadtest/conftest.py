"""Fixtures of the load-test tests: the stub server, the real tiny server, headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest
from loadtest_helpers import StubServer, running_stub

from benchmarks.common import Server, tiny_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
# The flags tests/e2e uses on these machines (no sandbox in containers, no GPU, no network).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A scriptable fal-like server over plain http (see loadtest_helpers.StubServer)."""
    with running_stub() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``flux2-edit serve --model tiny`` over plain http, as ``make demo`` runs it; references
    resized to 128x128 so a CPU edit takes about a second."""
    root = tmp_path_factory.mktemp("loadtest-server")
    with tiny_server(root, {"FLUX2_REFERENCE_PIXELS": str(128 * 128)}) as running:
        yield running


def _missing(message: str) -> NoReturn:
    """CI must not skip silently; a developer machine without the browser skips."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium driven by Playwright (never ``playwright install``)."""
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} not found: run 'make system-deps' (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: run 'make install' (the dev extra pins it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()
