"""A real ``flux2-edit serve --model tiny`` over https, shared by the official-client tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.common import Server, tiny_server

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
