"""The official Python ``fal_client`` and JS ``@fal-ai/client`` run every endpoint of the FLUX.2
family: sync run, subscribe with logs, submit/status/result, cancel; and get fal's shapes.

One in-process https server (the real app and worker around the fake engine, 4 steps of 20 ms;
LoRAs from a LoRA directory and from a loopback URL) serves the module. The real tiny model runs
one text-to-image and one edit request per client on the session's ``flux2-edit serve --model
tiny`` (tests/clients/conftest.py), so both modes run through the real pipeline too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_python_client import run_client

from pipelines.fake import FakeEngine
from service.endpoints import ENDPOINTS
from service.tls import write_local_certificates
from tests.helpers.loras import file_server, write_lora
from tests.helpers.node import JS_DIR, text_of
from tests.helpers.services import fake_components, serving

pytestmark = pytest.mark.slow

NODE_TIMEOUT_S = 240


class FamilyServer:
    """What the scripts need to reach the in-process server (``run_client`` reads these)."""

    def __init__(self, origin: str, ca: Path, log: Path, lora_url: str) -> None:
        self.origin = origin
        self.host_port = origin.removeprefix("https://")
        self.ca = ca
        self.log = log
        self.lora_url = lora_url


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyServer]:
    root = tmp_path_factory.mktemp("family-clients")
    write_lora(root / "loras" / "brand.safetensors", seed=1)
    certificates = write_local_certificates(root / "certs")
    lora = write_lora(root / "url.safetensors", seed=2).read_bytes()
    with file_server({"/style.safetensors": lora}) as (lora_origin, _):
        parts = fake_components(
            root,
            engine=lambda: FakeEngine(num_steps=4, step_seconds=0.02),
            lora_dir=root / "loras",
            fetch_allow="127.0.0.1",
        )
        with serving(parts, tls=certificates) as origin:
            yield FamilyServer(
                origin, certificates.ca, root / "none.log", f"{lora_origin}/style.safetensors"
            )


def python_body(family: FamilyServer) -> str:
    apps = json.dumps({e.id: [e.mode, e.steps, e.adapters] for e in ENDPOINTS.values()})
    return f"""
    APPS = json.loads({apps!r})
    LORA_URL = {family.lora_url!r}

    def arguments(app, seed):
        mode, steps, adapters = APPS[app]
        body = {{"prompt": PROMPT, "image_size": "square", "seed": seed}}
        if mode == "edit":
            body["image_urls"] = [reference()]
        if steps == "request":
            body["num_inference_steps"] = 6
        if adapters == "request":
            body["loras"] = [{{"path": "brand"}}, {{"path": LORA_URL, "scale": 0.5}}]
        return body

    for app in APPS:
        found = {{}}
        found["run"] = fal_client.run(app, arguments=arguments(app, 1))
        updates = []
        found["subscribe"] = fal_client.subscribe(
            app, arguments=arguments(app, 2), with_logs=True,
            on_queue_update=lambda status: updates.append(status_json(status)),
        )
        found["updates"] = updates
        handle = fal_client.submit(app, arguments=arguments(app, 3))
        found["status"] = status_json(handle.status(with_logs=True))
        found["get"] = handle.get()
        found["final"] = status_json(handle.status(with_logs=True))
        slow = {{**arguments(app, 4), "num_images": 4}}
        if APPS[app][1] == "request":
            slow["num_inference_steps"] = 50
        doomed = fal_client.submit(app, arguments=slow)
        try:
            doomed.cancel()
            found["cancel"] = "requested"
        except FalClientHTTPError as exc:
            found["cancel"] = exc.status_code
        found["cancelled"] = expect_http_error(doomed.get)
        results[app] = found

    results["bad_lora"] = expect_http_error(lambda: fal_client.run(
        "fal-ai/flux-2/lora", arguments={{"prompt": PROMPT, "loras": [{{"path": "nope"}}]}}
    ))
    """


def step_logs(statuses: list[dict[str, Any]]) -> list[str]:
    return [
        entry["message"]
        for status in statuses
        for entry in status.get("logs") or []
        if entry["message"].startswith("step ")
    ]


def test_python_client_runs_every_endpoint(family: FamilyServer, tmp_path: Path) -> None:
    results = run_client(family, tmp_path, python_body(family), timeout=180)
    for app, endpoint in ENDPOINTS.items():
        found = results[app]
        steps = "6" if endpoint.steps == "request" else "4"
        for key, seed in (("run", 1), ("subscribe", 2), ("get", 3)):
            output = found[key]
            assert set(output) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
            assert output["seed"] == seed, (app, key)
            (image,) = output["images"]
            assert (image["width"], image["height"], image["content_type"]) == (
                512,
                512,
                "image/png",
            )
            assert image["url"].startswith(f"{family.origin}/files/")
        assert f"step {steps}/{steps}" in step_logs(found["updates"]), (app, found["updates"])
        assert found["updates"][-1]["type"] == "Completed"
        assert found["status"]["type"] in ("Queued", "InProgress", "Completed")
        assert found["final"]["type"] == "Completed" and found["final"]["error"] is None
        assert f"step {steps}/{steps}" in step_logs([found["final"]])
        assert found["cancel"] in ("requested", 400), (app, found["cancel"])
        if found["cancel"] == "requested":
            assert found["cancelled"]["status"] == 499, found["cancelled"]
    assert "requested" in {results[app]["cancel"] for app in ENDPOINTS}
    bad = results["bad_lora"]
    assert (bad["class"], bad["status"]) == ("FalClientHTTPError", 422)
    assert json.loads(bad["body"])["detail"][0]["loc"] == ["body", "loras", 0, "path"]


def run_node(node: str, origin: str, ca: Path, env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "NODE_", "FLUX2_"))}
    env.update(FLUX2_ORIGIN=origin, NODE_EXTRA_CA_CERTS=str(ca), NO_COLOR="1", **env_extra)
    command = [node, "--test", "--test-reporter=spec", "fal_family.test.mjs"]
    try:
        proc = subprocess.run(
            command, cwd=JS_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=NODE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"node --test timed out after {NODE_TIMEOUT_S} s:\n{text_of(exc.stdout)}")
    if proc.returncode != 0:
        pytest.fail(f"fal_family.test.mjs failed (rc {proc.returncode}):\n{proc.stdout}")
    assert re.search(r"^ℹ fail 0$", proc.stdout, re.MULTILINE), proc.stdout
    assert not re.search(r"^ℹ pass 0$", proc.stdout, re.MULTILINE), proc.stdout
    return proc.stdout


def test_js_client_runs_every_endpoint(node: str, family: FamilyServer) -> None:
    endpoints = {e.id: {"mode": e.mode, "steps": e.steps, "adapters": e.adapters}
                 for e in ENDPOINTS.values()}  # fmt: skip
    run_node(
        node,
        family.origin,
        family.ca,
        {"FLUX2_ENDPOINTS_JSON": json.dumps(endpoints), "FLUX2_LORA_URL": family.lora_url},
    )


def test_both_clients_run_each_mode_on_the_tiny_model(
    node: str, server: Any, tmp_path: Path
) -> None:
    """One text-to-image and one base edit (4 steps) per client through the real pipeline."""
    results = run_client(
        server,
        tmp_path,
        """
        results["t2i"] = fal_client.run(
            "fal-ai/flux-2/flash", arguments={"prompt": PROMPT, "image_size": "square", "seed": 5}
        )
        updates = []
        results["edit"] = fal_client.subscribe(
            "fal-ai/flux-2/edit",
            arguments={**BASE, "num_inference_steps": 4, "seed": 6},
            with_logs=True,
            on_queue_update=lambda status: updates.append(status_json(status)),
        )
        results["updates"] = updates
        """,
    )
    assert results["t2i"]["seed"] == 5 and len(results["t2i"]["images"]) == 1
    assert results["edit"]["seed"] == 6
    assert "step 4/4" in step_logs(results["updates"])
    tiny = {
        endpoint_id: {"mode": e.mode, "steps": e.steps, "adapters": e.adapters}
        for endpoint_id in ("fal-ai/flux-2/flash", "fal-ai/flux-2/edit")
        if (e := ENDPOINTS[endpoint_id])
    }
    run_node(node, server.origin, server.ca, {"FLUX2_ENDPOINTS_JSON": json.dumps(tiny)})
