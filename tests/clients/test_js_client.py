"""The official, unmodified JS ``@fal-ai/client`` against a real ``flux2-edit serve --model tiny``.

The scenarios live in ``tests/clients/js/fal_client.test.mjs`` (node's built-in test runner); this
wrapper installs the pinned client from ``package-lock.json`` when ``node_modules`` is missing, then
runs them once per way of pointing the client at our host (docs/reference/fal-protocol.md §9.2): a
``requestMiddleware`` that rewrites the fal URLs, and ``proxyUrl`` with ``x-fal-target-url``.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest

from tests.helpers.node import JS_DIR, text_of

pytestmark = pytest.mark.slow

TEST_FILE = "fal_client.test.mjs"
NODE_TIMEOUT_S = 300


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
