"""Parallel groups behind the real commands: ``serve --parallel ulysses:2`` answering the official
clients (Python and JS fal clients, the OpenAI SDK streaming partial images) with the one-process
pixels, and ``worker --parallel tp:2`` on Redis losing a rank mid-job: the worker exits non-zero
saying why, and the restarted worker completes the job with the one-process pixels.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from openai import OpenAI
from openai.types import ImageEditCompletedEvent, ImageEditPartialImageEvent
from PIL import Image

from benchmarks.common import Server, flux2_edit_command, tiny_server
from pipelines.flux2 import Flux2Engine, Flux2EngineConfig
from pipelines.schedules import parse_schedule
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest
from service.jobs import JobStatus
from service.queue.redis import RedisJobQueue
from service.storage.redis import RedisArtifactStore
from tests.clients.conftest import node as node  # the fixture: node, the pinned client
from tests.helpers.images import data_uri
from tests.helpers.jobs import make_job
from tests.helpers.node import JS_DIR

pytestmark = pytest.mark.slow

REFERENCE_PIXELS = 128 * 128
SETTINGS = {
    "FLUX2_REFERENCE_PIXELS": str(REFERENCE_PIXELS),
    "FLUX2_SAFETY_CHECKER": "none",  # random-weight outputs: keep the pixels as they are
    "FLUX2_LOG_LEVEL": "info",
    "FLUX2_WARMUP": "false",  # ready sooner: a warm-up edit at 1024² is slow on CPU ranks
}
PROMPT = "paint the car #FF5733"
RESULT_MARKER = "@@RESULT@@ "
CLIENT_SCRIPT = """
import json, sys, fal_client
result = fal_client.run("fal-ai/flux-2/flash/edit", arguments=json.loads(sys.argv[1]))
print({marker!r} + json.dumps(result))
"""
JS_SCRIPT = """
import {{ createFalClient }} from "@fal-ai/client";
const origin = process.env.FLUX2_ORIGIN;
const fal = createFalClient({{
  credentials: "test-key",
  requestMiddleware: async (request) => ({{
    ...request,
    url: request.url.replace("https://queue.fal.run/", `${{origin}}/queue/`),
  }}),
}});
const result = await fal.subscribe("fal-ai/flux-2/flash/edit", {{
  input: JSON.parse(process.argv[1]), mode: "polling", pollInterval: 200,
}});
console.log({marker!r} + JSON.stringify(result.data));
"""


def reference() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (144, 112, 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def official_client_run(server: Server, arguments: dict[str, object]) -> dict[str, object]:
    """``fal_client.run`` in a fresh interpreter, configured as for fal (FAL_RUN_HOST, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "SSL_CERT_"))}
    env.update(
        FAL_RUN_HOST=server.host_port,
        FAL_QUEUE_RUN_HOST=f"{server.host_port}/queue",
        SSL_CERT_FILE=str(server.ca),
        FAL_KEY="test-key",
        NO_PROXY="*",
    )
    script = textwrap.dedent(CLIENT_SCRIPT.format(marker=RESULT_MARKER))
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(arguments)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert done.returncode == 0 and lines, f"{done.stderr}\n{server.log.read_text()[-3000:]}"
    result: dict[str, object] = json.loads(lines[-1][len(RESULT_MARKER) :])
    return result


def official_js_client_run(node: str, server: Server, arguments: dict[str, object]) -> object:
    """``fal.subscribe`` of the official JS client (polling), pointed at ``server``."""
    env = {**os.environ, "FLUX2_ORIGIN": server.origin, "NODE_EXTRA_CA_CERTS": str(server.ca)}
    script = textwrap.dedent(JS_SCRIPT.format(marker=RESULT_MARKER))
    done = subprocess.run(
        [node, "--input-type=module", "-e", script, json.dumps(arguments)],
        cwd=JS_DIR,  # where the pinned @fal-ai/client is installed
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert done.returncode == 0 and lines, f"{done.stderr}\n{server.log.read_text()[-3000:]}"
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def fetched(server: Server, result: object) -> Image.Image:
    """The one image of a fal result, fetched from the server."""
    assert isinstance(result, dict), result
    (image,) = result["images"]
    context = ssl.create_default_context(cafile=str(server.ca))
    served = httpx.get(image["url"], verify=context, timeout=30)
    assert served.status_code == 200
    return Image.open(io.BytesIO(served.content)).convert("RGB")


def test_serve_parallel_gives_the_official_clients_the_one_process_pixels(
    tmp_path: Path, tiny_checkpoint: Path, node: str
) -> None:
    settings = {**SETTINGS, "FLUX2_PARALLEL": "ulysses:2", "FLUX2_SCHEDULE": "1.0,0.5"}
    arguments = {
        "prompt": PROMPT,
        "image_urls": [data_uri(png(reference()))],
        "image_size": "square",  # 512x512
        "seed": 5,
        "guidance_scale": 2.5,
    }
    with tiny_server(tmp_path / "serve", settings, tls=True) as server:
        python = fetched(server, official_client_run(server, arguments))
        javascript = fetched(server, official_js_client_run(node, server, arguments))
        context = ssl.create_default_context(cafile=str(server.ca))
        with (
            httpx.Client(verify=context, timeout=60) as http,
            OpenAI(base_url=f"{server.origin}/v1", api_key="test-key", http_client=http) as sdk,
        ):
            stream = sdk.images.edit(
                model="fal-ai/flux-2/flash/edit", image=("car.png", png(reference())),
                prompt=PROMPT, size="512x512", stream=True, partial_images=1,
                extra_body={"seed": 5, "guidance_scale": 2.5},
            )  # fmt: skip
            events = list(stream)
        log = server.log.read_text()
    assert "parallel ulysses:2: ready" in log
    # Rank 0 makes the previews of a parallel batch: one after step 1 of 2.
    assert [type(e) for e in events] == [ImageEditPartialImageEvent, ImageEditCompletedEvent]
    partial, completed = events
    assert isinstance(partial, ImageEditPartialImageEvent) and partial.size == "128x128"
    assert isinstance(completed, ImageEditCompletedEvent)
    from_openai = Image.open(io.BytesIO(base64.b64decode(completed.b64_json))).convert("RGB")

    expected = one_process(tiny_checkpoint, "1.0,0.5")
    for got in (python, javascript, from_openai):
        assert got.size == (512, 512)
        assert max_diff(expected, got) <= 1


def one_process(checkpoint: Path, schedule: str) -> Image.Image:
    """What the one-process engine makes of the tests' edit (seed 5, guidance 2.5, 512x512)."""
    engine = Flux2Engine(
        Flux2EngineConfig(
            model_path=checkpoint,
            device="cpu",
            schedule=parse_schedule(schedule),
            reference_pixels=REFERENCE_PIXELS,
        )
    )
    engine.load()
    request = EditRequest("x", PROMPT, (reference(),), ImageSize(512, 512), seed=5)
    (result,) = engine.run([request])
    return result.images[0]


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_a_killed_rank_stops_the_worker_and_the_restarted_worker_completes_the_job(
    redis_url: str, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    steps = 6
    schedule = ",".join(f"{1 - i / steps:.3f}" for i in range(steps))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX2_")}
    env.update(
        SETTINGS,
        FLUX2_REDIS_URL=redis_url,
        FLUX2_CACHE_DIR=str(tmp_path / "cache"),
        FLUX2_PARALLEL="tp:2",
        FLUX2_SCHEDULE=schedule,
        FLUX2_LEASE_SECONDS="2",
    )
    queue = RedisJobQueue(redis_url, consumer="test", lease_seconds=2)
    workers: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as out:
            command = [*flux2_edit_command(), "worker", "--model", "tiny"]
            workers.append(subprocess.Popen(command, env=env, stdout=out, stderr=out))
        return workers[-1], log

    try:
        first, first_log = start("first")
        wait_for(lambda: "worker ready" in first_log.read_text(), 300, first_log)
        arguments = {"prompt": PROMPT, "image_urls": [data_uri(png(reference()))], "seed": 5}
        job = make_job(input={**arguments, "image_size": "square", "guidance_scale": 2.5})
        queue.submit(job)

        def running() -> bool:
            view = queue.view(job.id)
            return view is not None and any(e.message.startswith("step ") for e in view.logs)

        wait_for(running, 120, first_log)
        started = re.search(r"started 2 ranks \(pids (\d+), (\d+)\)", first_log.read_text())
        assert started, first_log.read_text()
        rank_1 = int(started[2])
        os.kill(rank_1, signal.SIGKILL)
        assert first.wait(timeout=60) != 0
        said = first_log.read_text()
        assert f"the group is down: rank 1 (pid {rank_1}) killed by SIGKILL" in said
        assert "worker defunct" in said
        for pid in map(int, started.groups()):
            assert not alive(pid)

        second, second_log = start("second")  # what the process manager does

        def completed() -> bool:
            view = queue.view(job.id)
            return view is not None and view.status is JobStatus.COMPLETED

        wait_for(completed, 300, second_log)
        view = queue.view(job.id)
        assert view is not None and view.outcome is not None and view.outcome.ok, view
        runners = [e.message for e in view.logs if e.message.startswith("Running FLUX.2")]
        assert len(runners) == 2, runners
        assert f":{second.pid} " in runners[-1]
        (file,) = view.outcome.body["images"]
        stored = RedisArtifactStore(redis_url).open(file["url"].split("/files/", 1)[1])
        got = Image.open(io.BytesIO(stored.data)).convert("RGB")
        assert max_diff(one_process(tiny_checkpoint, schedule), got) <= 1  # tp:2's pixels

        second.send_signal(signal.SIGTERM)  # drains, then ends its ranks
        assert second.wait(timeout=60) == 0
        drained = second_log.read_text()
        assert "draining" in drained
        ranks = re.search(r"started 2 ranks \(pids (\d+), (\d+)\)", drained)
        assert ranks, drained
        for pid in map(int, ranks.groups()):
            assert not alive(pid)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)
        queue.close()


def wait_for(condition: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
