"""Scale-out for real: Redis, one ``flux2-edit api`` and two ``flux2-edit worker`` processes.

30 jobs go in through the HTTP API; one worker is SIGKILLed while it runs a job. Every job must
complete with its image, none lost, none completed twice (each webhook arrives exactly once).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from benchmarks.common import flux2_edit_command, free_port

pytestmark = pytest.mark.slow

JOBS = 30
STEPS = 12  # enough steps that a job is caught mid-run


class Hooks:
    """A loopback webhook receiver that records every delivery."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hooks.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.close()


@pytest.fixture
def client(cluster: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster["origin"], timeout=30) as http:
        yield http


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX2_")}
    env.update(
        FLUX2_REDIS_URL=redis_url,
        FLUX2_CACHE_DIR=str(tmp_path / "cache"),
        FLUX2_REFERENCE_PIXELS=str(64 * 64 * 4),
        FLUX2_SCHEDULE=",".join(f"{1 - i / STEPS:.4f}" for i in range(STEPS)),
        FLUX2_LEASE_SECONDS="3",
        FLUX2_WARMUP="false",  # ready sooner; the test needs no first-request speed
        FLUX2_MAX_BATCH_IMAGES="2",
        FLUX2_LOG_LEVEL="info",
        FLUX2_WEBHOOK_ALLOW="127.0.0.1",  # the webhook receiver runs on loopback
    )
    port = free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {}
    # Build the tiny checkpoint once, before two workers race for it.
    subprocess.run(
        [
            *flux2_edit_command(),
            "weights",
            "tiny",
            str(tmp_path / "cache" / "models" / "flux2-tiny-v1"),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    commands = {
        "api": [*flux2_edit_command(), "api", "--port", str(port)],
        "worker-a": [*flux2_edit_command(), "worker", "--model", "tiny"],
        "worker-b": [*flux2_edit_command(), "worker", "--model", "tiny"],
    }
    for name, command in commands.items():
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("w") as log:
            processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    origin = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{origin}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, logs["api"].read_text()
            time.sleep(0.2)
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


def reference() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (30, 160, 90)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_thirty_jobs_survive_a_worker_killed_mid_job(
    cluster: dict[str, Any], hooks: Hooks, client: httpx.Client
) -> None:
    origin = cluster["origin"]
    ids = []
    for i in range(JOBS):
        response = client.post(
            f"/queue/fal-ai/flux-2/flash/edit?fal_webhook={hooks.url}",
            json={"prompt": f"edit {i} #00FF00", "image_urls": [reference()],
                  "image_size": "square", "seed": i},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        ids.append(response.json()["request_id"])

    victim = cluster["processes"]["worker-a"]
    victim_tag = f":{victim.pid} "
    killed_job = None
    deadline = time.monotonic() + 180
    while killed_job is None:
        assert time.monotonic() < deadline, "worker-a never ran a job"
        for request_id in ids:
            status = client.get(f"/queue/fal-ai/flux-2/requests/{request_id}/status?logs=1").json()
            if status["status"] != "IN_PROGRESS":
                continue
            messages = [entry["message"] for entry in status["logs"]]
            running_on_a = any(m.startswith("Running FLUX.2") and victim_tag in m for m in messages)
            steps = [m for m in messages if m.startswith("step ")]
            if running_on_a and 1 <= len(steps) <= STEPS // 2:
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                killed_job = request_id
                break
        time.sleep(0.05)

    deadline = time.monotonic() + 300
    pending = set(ids)
    while pending:
        assert time.monotonic() < deadline, f"jobs never completed: {sorted(pending)}"
        for request_id in list(pending):
            status = client.get(f"/queue/fal-ai/flux-2/requests/{request_id}/status").json()
            if status["status"] == "COMPLETED":
                pending.discard(request_id)
        time.sleep(0.2)

    for request_id in ids:
        result = client.get(f"/queue/fal-ai/flux-2/requests/{request_id}")
        assert result.status_code == 200, (request_id, result.text)
        (image,) = result.json()["images"]
        file = client.get(image["url"].removeprefix(origin))
        assert file.status_code == 200
        assert len(file.content) == image["file_size"]

    # The killed worker's job was taken back and run again by the other worker.
    logs = client.get(f"/queue/fal-ai/flux-2/requests/{killed_job}/status?logs=1").json()["logs"]
    runners = [e["message"] for e in logs if e["message"].startswith("Running FLUX.2")]
    assert len(runners) >= 2, runners
    assert victim_tag not in runners[-1]

    # Exactly one webhook per job: nothing completed twice, nothing lost.
    deadline = time.monotonic() + 30
    while len(hooks.received) < JOBS and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a late duplicate would arrive now
    counts = Counter(hook["request_id"] for hook in hooks.received)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, counts.most_common(3)
    assert all(hook["status"] == "OK" for hook in hooks.received)

    # SIGTERM drains the surviving worker: it stops claiming and exits cleanly.
    survivor = cluster["processes"]["worker-b"]
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(timeout=60) == 0
    assert "draining" in cluster["logs"]["worker-b"].read_text()
