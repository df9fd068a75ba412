"""Browser tests of the web playground: a real server and Debian's Chromium driven by Playwright.

Chromium is the Debian package (``make system-deps`` installs it); Playwright's own browser
downloads are never used (``playwright install`` needs the network). A missing Chromium or
Playwright fails the run when ``CI`` is set and skips the browser tests elsewhere.

Screenshots go to ``tests/e2e/artifacts/`` (git-ignored; ``E2E_ARTIFACTS_DIR`` moves them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from e2e_helpers import (
    FakeServerFactory,
    Server,
    running_fake_server,
    running_tiny_server,
)

from tests.helpers.browser import launched_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on the tiny FLUX.2 model over plain http."""
    with running_tiny_server(tmp_path_factory.mktemp("e2e-tiny")) as running:
        yield running


@pytest.fixture
def fake_server(tmp_path: Path) -> FakeServerFactory:
    """``with fake_server(api_keys=..., step_seconds=..., flag_everything=...) as server:``"""

    def make(**options: Any) -> AbstractContextManager[Server]:
        return running_fake_server(tmp_path / "fake-server", **options)

    return make


@pytest.fixture(scope="module")  # torn down with its module: its event loop must not outlive it
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, launched by Playwright's bundled driver."""
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (own storage, like a fresh profile) and page per test.

    Console errors and uncaught page errors fail the test: the page must not throw.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console.{message.type}: {message.text}")
            if message.type == "error" and not _expected_console_error(message.text)
            else None
        ),
    )
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


def _expected_console_error(text: str) -> bool:
    """Chromium logs every non-2xx fetch as a console error; tests provoke some on purpose."""
    return "Failed to load resource" in text
