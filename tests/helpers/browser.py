"""Debian's headless Chromium, driven by Playwright (never ``playwright install``).

The flags matter on these machines: no sandbox (containers), no GPU, and no background
networking (the network is closed; without them Chromium retries many connections at once).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
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


def missing(message: str) -> NoReturn:
    """CI must not skip silently; a developer machine without the browser skips."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def launched_chromium() -> Iterator[Browser]:
    """Chromium for the length of the block (a module-scoped fixture's: Playwright's event loop
    must not outlive the module). Skips (fails in CI) without Chromium or Playwright."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} not found: run 'make system-deps' (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed: run 'make install' (the dev extra pins it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
