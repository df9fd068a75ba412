"""The official, unmodified JS ``@fal-ai/client`` against a real ``flux2-edit serve --model tiny``.

The scenarios live in ``tests/clients/js/fal_client.test.mjs`` (node's built-in test runner); this
wrapper installs the pinned client from ``package-lock.json`` when ``node_modules`` is missing, then
runs them once per way of pointing the client at our host (docs/reference/fal-protocol.md §9.2): a
``requestMiddleware`` that rewrites the fal URLs, and ``proxyUrl`` with ``x-fal-target-url``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

JS_DIR = Path(__file__).parent / "js"
TEST_FILE = "fal_client.test.mjs"
MIN_NODE_MAJOR = 20
NPM_TIMEOUT_S = 300
NODE_TIMEOUT_S = 300


def pinned_client_version() -> str:
    return str(json.loads((JS_DIR / "package.json").read_text())["dependencies"]["@fal-ai/client"])


def installed_client_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
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


def text_of(output: str | bytes | None) -> str:
    """What a timed-out subprocess printed (``TimeoutExpired`` may hold bytes even in text mode)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def server_tail(server: Any, lines: int = 60) -> str:
    try:
        return "server log tail:\n" + "\n".join(server.log.read_text().splitlines()[-lines:])
    except OSError:
        return ""


@pytest.mark.parametrize("mode", ["middleware", "proxy"])
def test_js_client(node: str, server: Any, mode: str) -> None:
    """Every scenario of ``fal_client.test.mjs`` passes with the client configured by ``mode``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "NODE_", "FLUX2_"))}
    env.update(
        FLUX2_ORIGIN=server.origin,
        FLUX2_JS_MODES=mode,
        NODE_EXTRA_CA_CERTS=str(server.ca),
        NO_COLOR="1",
    )
    command = [node, "--test", "--test-reporter=spec", TEST_FILE]
    try:
        proc = subprocess.run(
            command,
            cwd=JS_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=NODE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = f"{text_of(exc.stdout)}\n{server_tail(server)}"
        pytest.fail(f"node --test timed out after {NODE_TIMEOUT_S} s:\n{output}")
    if proc.returncode != 0:
        pytest.fail(
            f"node --test {TEST_FILE} ({mode}) failed (rc {proc.returncode}):\n{proc.stdout}\n"
            f"{server_tail(server)}",
            pytrace=False,
        )
    assert re.search(r"^ℹ fail 0$", proc.stdout, re.MULTILINE), proc.stdout
    assert not re.search(r"^ℹ pass 0$", proc.stdout, re.MULTILINE), proc.stdout
