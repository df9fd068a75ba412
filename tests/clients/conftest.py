"""A real ``flux2-edit serve --model tiny`` over https, shared by the official-client tests."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.common import flux2_edit_command, free_port, wait_until_ready


@dataclass(frozen=True)
class Server:
    origin: str  # e.g. https://127.0.0.1:8443
    host_port: str  # e.g. 127.0.0.1:8443 (what FAL_RUN_HOST wants)
    ca: Path  # the CA that signed the server's certificate: what clients trust
    log: Path


@contextmanager
def running_server(root: Path, *, tls: bool) -> Iterator[Server]:
    """Start ``flux2-edit serve --model tiny`` on a free port; stop it on exit.

    References are resized to ~128x128 instead of 1 MP so a CPU run takes a fraction of a second.
    """
    certs = root / "certs"
    tls_args: list[str] = []
    if tls:
        subprocess.run([*flux2_edit_command(), "cert", "--out", str(certs)], check=True, timeout=60)
        tls_args = [
            "--ssl-certfile",
            str(certs / "cert.pem"),
            "--ssl-keyfile",
            str(certs / "key.pem"),
        ]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX2_")}
    env.update(
        FLUX2_CACHE_DIR=str(root / "cache"),
        FLUX2_REFERENCE_PIXELS=str(128 * 128),
        FLUX2_WEBHOOK_BACKOFF_SECONDS="0.2",
        FLUX2_WEBHOOK_ALLOW="127.0.0.1",  # the tests' receivers run on loopback
        FLUX2_LOG_LEVEL="info",
    )
    log = root / "server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                *flux2_edit_command(),
                "serve",
                "--model",
                "tiny",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *tls_args,
            ],  # fmt: skip
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    origin = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify: ssl.SSLContext | bool = (
        ssl.create_default_context(cafile=str(certs / "ca.pem")) if tls else True
    )
    try:
        wait_until_ready(process, origin, log, timeout=180, verify=verify)
        yield Server(origin=origin, host_port=f"127.0.0.1:{port}", ca=certs / "ca.pem", log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


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
