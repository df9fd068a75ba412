"""A Redis restart in the middle of a run: nothing exits, nothing persisted is lost.

A real ``redis-server`` with AOF (``appendfsync always``), one ``flux2-edit api`` and one
``flux2-edit worker`` on the tiny model. Jobs go in; Redis is SIGKILLed while they run and
restarted on the same port and directory. Neither process may exit; while Redis is away the API
node says so (``/ready`` 503 with the reason, submits 503 with Retry-After); afterwards every job
completes with its image.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from benchmarks.common import flux2_edit_command, free_port
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

JOBS = 8


@dataclass
class Redis:
    """A redis-server we can kill and start again on the same port and directory."""

    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed: run 'make system-deps'"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                   str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
                   "--save", ""]  # fmt: skip
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, timeout=20, what="redis-server started")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = Redis(port=free_port(), folder=folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster(redis_server: Redis, tmp_path: Path) -> Iterator[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX2_")}
    env.update(
        FLUX2_REDIS_URL=redis_server.url,
        FLUX2_CACHE_DIR=str(tmp_path / "cache"),
        FLUX2_REFERENCE_PIXELS=str(64 * 64),
        FLUX2_SCHEDULE="1.0,0.75,0.5,0.25",
        FLUX2_WARMUP="false",
        FLUX2_SAFETY_CHECKER="none",
        FLUX2_LEASE_SECONDS="10",
        FLUX2_LOG_LEVEL="info",
    )
    port = free_port()
    commands = {
        "api": [*flux2_edit_command(), "api", "--port", str(port)],
        "worker": [*flux2_edit_command(), "worker", "--model", "tiny"],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    for name, command in commands.items():
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("w") as log:
            processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    origin = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(origin), timeout=180, interval=0.2, what="a ready worker")
        yield {"origin": origin, "processes": processes, "logs": logs}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _ready(origin: str) -> bool:
    try:
        return httpx.get(f"{origin}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def reference() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (30, 160, 90)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_redis_restart_loses_nothing_and_stops_nobody(
    redis_server: Redis, cluster: dict[str, Any]
) -> None:
    origin, processes = cluster["origin"], cluster["processes"]

    def alive() -> bool:
        return all(process.poll() is None for process in processes.values())

    with httpx.Client(base_url=origin, timeout=30) as client:
        ids = []
        for i in range(JOBS):
            response = client.post(
                "/queue/fal-ai/flux-2/flash/edit",
                json={"prompt": f"edit {i}", "image_urls": [reference()],
                      "image_size": "square", "seed": i},
            )  # fmt: skip
            assert response.status_code == 200, response.text
            ids.append(response.json()["request_id"])

        def statuses() -> list[str]:
            return [client.get(f"/queue/fal-ai/flux-2/requests/{i}/status").json()["status"]
                    for i in ids]  # fmt: skip

        wait_for(lambda: "COMPLETED" in statuses(), timeout=120, what="a first job done")
        redis_server.kill()
        time.sleep(2.0)
        assert alive(), "a process exited when Redis went away"
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "unreachable" in ready.json()["reason"]
        refused = client.post("/queue/fal-ai/flux-2/flash/edit", json={"prompt": "x",
                              "image_urls": [reference()]})  # fmt: skip
        assert refused.status_code == 503, refused.text
        assert refused.headers.get("retry-after") == "5"
        assert refused.json()["error_type"] == "runner_scheduling_failure"

        redis_server.start()
        wait_for(lambda: _ready(origin), timeout=60, interval=0.2, what="ready again")
        wait_for(lambda: set(statuses()) == {"COMPLETED"}, timeout=180, interval=0.5,
                 what="every job completed")  # fmt: skip
        for request_id in ids:
            result = client.get(f"/queue/fal-ai/flux-2/requests/{request_id}")
            assert result.status_code == 200, result.text
            [image] = result.json()["images"]
            assert client.get(image["url"]).status_code == 200
        assert alive(), "a process exited after Redis came back"
    worker_log = cluster["logs"]["worker"].read_text()
    assert "riding it out" in worker_log or "cannot claim" in worker_log, worker_log[-3000:]
