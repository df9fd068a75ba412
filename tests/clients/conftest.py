"""A real ``flux2-edit serve --model tiny`` over https, shared by the official-client tests, and
node with the pinned ``@fal-ai/client``."""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.common import Server, tiny_server
from tests.helpers.node import (
    JS_DIR,
    MIN_NODE_MAJOR,
    NPM_TIMEOUT_S,
    installed_client_version,
    pinned_client_version,
    text_of,
)

#: What the client tests' server runs with: references resized to ~128x128 so a CPU edit takes
#: a fraction of a second; webhooks to the tests' loopback receivers, retried quickly.
SETTINGS = {
    "FLUX2_REFERENCE_PIXELS": str(128 * 128),
    "FLUX2_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "FLUX2_WEBHOOK_ALLOW": "127.0.0.1",
    "FLUX2_LOG_LEVEL": "info",
}


@contextmanager
def running_server(root: Path, *, tls: bool) -> Iterator[Server]:
    """``flux2-edit serve --model tiny`` on a free port (https with ``tls``); stopped on exit."""
    with tiny_server(root, SETTINGS, ready_timeout=180, tls=tls) as server:
        yield server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on the tiny model, with TLS (the Python client only speaks https)."""
    with running_server(tmp_path_factory.mktemp("server"), tls=True) as running:
        yield running


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on the tiny model over plain http, as ``make demo`` runs it."""
    with running_server(tmp_path_factory.mktemp("http-server"), tls=False) as running:
        yield running


@pytest.fixture(scope="session")
def node() -> str:
    """node, with the pinned ``@fal-ai/client`` installed from the lockfile (``npm ci``)."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("node is not installed: the @fal-ai/client tests need Node.js >= 20 and npm")
    version = subprocess.run(
        [exe, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.skip(f"node {version} is too old: the @fal-ai/client tests need Node.js >= 20")
    # pytest-xdist runs a session per worker: one installs, the others wait and find it done.
    with (JS_DIR / ".npm-install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_client_version() != pinned_client_version():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail(f"npm is missing: cannot install the pinned @fal-ai/client in {JS_DIR}")
            try:
                proc = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=JS_DIR,
                    capture_output=True,
                    text=True,
                    timeout=NPM_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                output = text_of(exc.stdout) + text_of(exc.stderr)
                pytest.fail(f"npm ci in {JS_DIR} timed out after {NPM_TIMEOUT_S} s:\n{output}")
            if proc.returncode != 0:
                output = f"{proc.stdout}\n{proc.stderr}"
                pytest.fail(f"npm ci in {JS_DIR} failed (rc {proc.returncode}):\n{output}")
            installed, pinned = installed_client_version(), pinned_client_version()
            if installed != pinned:
                pytest.fail(f"npm ci installed @fal-ai/client {installed}, not {pinned}")
    return exe
