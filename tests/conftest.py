"""Shared fixtures: the offline tiny FLUX.2 checkpoint and a real Redis server, once a session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly built tiny random-weight FLUX.2 checkpoint (real classes, diffusers layout)."""
    from weights.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "flux2-tiny")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``redis-server`` on a free loopback port, without persistence.

    Missing ``redis-server`` fails the run in CI (``CI`` set: CI must not skip silently) and skips
    the Redis half of the contract elsewhere: install it with ``make system-deps``.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        message = (
            "redis-server is not installed: run 'make system-deps' (Debian package redis-server)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    folder = tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(folder)]  # fmt: skip
    with (folder / "redis.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _pong(port):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start: {(folder / 'redis.log').read_text()}")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """At the very end (after pytest's own short summary), which suites skipped tests and why:
    a missing system package, most often (``make test`` installs them when it runs as root;
    ``make system-deps`` says how otherwise)."""
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts: dict[tuple[str, str], int] = {}
    for report in skipped:
        path = str(report.location[0]) if getattr(report, "location", None) else str(report.nodeid)
        suite = "/".join(Path(path).parts[:2])
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts[(suite, reason)] = counts.get((suite, reason), 0) + 1
    terminalreporter.section("skipped suites")
    for (suite, reason), count in sorted(counts.items()):
        terminalreporter.write_line(f"{suite}: {count} skipped: {reason}")
