"""The official, unmodified Python ``fal_client`` against a real ``flux2-edit serve --model tiny``.

The client is configured as docs/reference/fal-protocol.md §9.1 says (``FAL_RUN_HOST``,
``FAL_QUEUE_RUN_HOST``, ``SSL_CERT_FILE``, a dummy ``FAL_KEY``). It reads the hosts at import time
and ``SSL_CERT_FILE`` changes TLS for the whole process, so every scenario runs in a fresh Python
subprocess that prints its findings as JSON; the assertions live here, in the test process.
"""

from __future__ import annotations

import base64
import io
import json
import os
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

APP = "fal-ai/flux-2/flash/edit"
PROMPT = "paint the car #FF5733 and keep the background"
RESULT_MARKER = "@@RESULT@@ "
STEP_MESSAGES = {f"step {k}/8" for k in range(1, 9)}

# Shared by every client script: the fal client, a small reference image as a data: URI, and
# helpers that turn the client's objects into JSON.
PRELUDE = '''
import asyncio
import dataclasses
import json
import sys
import time

import fal_client
from fal_client.client import FalClientHTTPError
from PIL import Image

APP = "fal-ai/flux-2/flash/edit"
PROMPT = "paint the car #FF5733 and keep the background"


def reference() -> str:
    image = Image.new("RGB", (96, 96))
    image.putdata([(x * 2, y * 2, (x + y) % 256) for y in range(96) for x in range(96)])
    return fal_client.encode_image(image, format="png")


BASE = {"prompt": PROMPT, "image_urls": [reference()], "image_size": "square", "seed": 1234}


def status_json(status):
    return {"type": type(status).__name__, **dataclasses.asdict(status)}


def http_error(exc):
    return {
        "class": type(exc).__name__,
        "status": exc.status_code,
        "message": exc.message,
        "error_type": exc.error_type,
        "body": exc.response.text,
    }


def expect_http_error(call):
    """Run ``call``; the FalClientHTTPError it raises as JSON, or a note that it did not raise."""
    try:
        value = call()
    except FalClientHTTPError as exc:
        return http_error(exc)
    return {"class": None, "returned": value}


results = {}
'''


def client_env(server: Any) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAL_", "SSL_CERT_", "REQUESTS_CA_", "HTTP_PROXY", "HTTPS_PROXY"))
    }
    env.update(
        FAL_RUN_HOST=server.host_port,
        FAL_QUEUE_RUN_HOST=f"{server.host_port}/queue",
        SSL_CERT_FILE=str(server.ca),
        FAL_KEY="test-key",
        NO_PROXY="*",
    )
    return env


def run_client(server: Any, tmp_path: Path, body: str, *, timeout: float = 120) -> dict[str, Any]:
    """Run ``PRELUDE + body`` with the official client in a subprocess; its ``results`` dict."""
    script = tmp_path / f"client_{time.monotonic_ns()}.py"
    script.write_text(
        PRELUDE
        + textwrap.dedent(body)
        + f"\nprint({RESULT_MARKER!r} + json.dumps(results, default=repr))\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=client_env(server),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        tail = server_tail(server)
        pytest.fail(f"client script timed out after {timeout} s:\n{exc.stderr}\n{tail}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        pytest.fail(
            f"client script failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
            f"{server_tail(server)}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    return result


def server_tail(server: Any, lines: int = 40) -> str:
    try:
        return "server log tail:\n" + "\n".join(server.log.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def tls(server: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca))


def fetch(server: Any, url: str) -> httpx.Response:
    with httpx.Client(verify=tls(server), timeout=30) as client:
        return client.get(url)


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_downloadable(server: Any, image: dict[str, Any], fmt: str, content_type: str) -> None:
    """The file behind an output ``ImageFile`` is a 512x512 ``fmt`` of ``file_size`` bytes."""
    assert image["url"].startswith(f"{server.origin}/"), image["url"]
    response = fetch(server, image["url"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == content_type
    assert len(response.content) == image["file_size"]
    decoded = open_image(response.content)
    assert decoded.format == fmt
    assert decoded.size == (512, 512)


def log_messages(statuses: list[dict[str, Any]]) -> list[str]:
    return [entry["message"] for status in statuses for entry in (status.get("logs") or [])]


# -- 1. run ----------------------------------------------------------------------------------


def test_run_returns_fal_output_and_serves_the_files(server: Any, tmp_path: Path) -> None:
    results = run_client(
        server,
        tmp_path,
        """
        results["png"] = fal_client.run(APP, arguments=BASE)
        results["jpeg"] = fal_client.run(APP, arguments={**BASE, "output_format": "jpeg"})
        results["webp"] = fal_client.run(APP, arguments={**BASE, "output_format": "webp"})
        results["two"] = fal_client.run(APP, arguments={**BASE, "num_images": 2, "seed": 99})
        results["sync"] = fal_client.run(APP, arguments={**BASE, "sync_mode": True})
        """,
    )

    png = results["png"]
    assert set(png) >= {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert png["seed"] == 1234
    assert png["prompt"] == PROMPT
    assert png["has_nsfw_concepts"] == [False]
    assert isinstance(png["timings"]["inference"], (int, float))
    assert png["timings"]["inference"] >= 0
    (image,) = png["images"]
    assert image["content_type"] == "image/png"
    assert image["width"] == 512
    assert image["height"] == 512
    assert isinstance(image["file_name"], str)
    assert image["file_name"].endswith(".png")
    assert isinstance(image["file_size"], int)
    assert image["file_size"] > 0
    assert_downloadable(server, image, "PNG", "image/png")

    (jpeg,) = results["jpeg"]["images"]
    assert jpeg["content_type"] == "image/jpeg"
    assert jpeg["file_name"].rsplit(".", 1)[-1] in {"jpg", "jpeg"}
    assert_downloadable(server, jpeg, "JPEG", "image/jpeg")

    (webp,) = results["webp"]["images"]
    assert webp["content_type"] == "image/webp"
    assert webp["file_name"].endswith(".webp")
    assert_downloadable(server, webp, "WEBP", "image/webp")

    two = results["two"]
    assert two["seed"] == 99
    assert len(two["images"]) == 2
    assert two["has_nsfw_concepts"] == [False, False]
    assert two["images"][0]["url"] != two["images"][1]["url"]
    for each in two["images"]:
        assert (each["width"], each["height"]) == (512, 512)
        assert_downloadable(server, each, "PNG", "image/png")

    (inline,) = results["sync"]["images"]
    prefix = "data:image/png;base64,"
    assert inline["url"].startswith(prefix), inline["url"][:80]
    data = base64.b64decode(inline["url"][len(prefix) :], validate=True)
    decoded = open_image(data)
    assert decoded.format == "PNG"
    assert decoded.size == (512, 512)
    assert inline["content_type"] == "image/png"
    if "file_size" in inline:
        assert inline["file_size"] == len(data)
    assert results["sync"]["seed"] == 1234


# -- 2. subscribe with logs ------------------------------------------------------------------


def test_subscribe_reports_progress_logs(server: Any, tmp_path: Path) -> None:
    results = run_client(
        server,
        tmp_path,
        """
        updates = []
        enqueued = []
        output = fal_client.subscribe(
            APP,
            arguments=BASE,
            with_logs=True,
            on_enqueue=enqueued.append,
            on_queue_update=lambda status: updates.append(status_json(status)),
        )
        results["output"] = output
        results["updates"] = updates
        results["enqueued"] = enqueued
        """,
    )
    assert results["output"]["seed"] == 1234
    assert results["output"]["images"][0]["width"] == 512
    assert len(results["enqueued"]) == 1
    assert results["enqueued"][0]

    updates = results["updates"]
    assert updates, "on_queue_update was never called"
    assert updates[-1]["type"] == "Completed"
    assert {u["type"] for u in updates} <= {"Queued", "InProgress", "Completed"}
    in_progress = [u for u in updates if u["type"] == "InProgress"]
    assert in_progress, f"no InProgress update among {[u['type'] for u in updates]}"
    assert any(m.startswith("step ") for m in log_messages(in_progress)), in_progress
    for status in updates:
        for entry in status.get("logs") or []:
            assert {"message", "level", "timestamp"} <= set(entry), entry
    steps = {m for m in log_messages(updates) if m.startswith("step ")}
    assert steps == STEP_MESSAGES


# -- 3. submit / status / result -------------------------------------------------------------


def test_submit_status_and_result(server: Any, tmp_path: Path) -> None:
    results = run_client(
        server,
        tmp_path,
        """
        handle = fal_client.submit(APP, arguments=BASE)
        results["request_id"] = handle.request_id
        results["urls"] = [handle.response_url, handle.status_url, handle.cancel_url]
        results["first"] = status_json(handle.status(with_logs=True))
        results["output"] = handle.get()
        results["after"] = status_json(handle.status(with_logs=True))
        results["after_no_logs"] = status_json(handle.status())
        results["by_id_status"] = status_json(
            fal_client.status(APP, handle.request_id, with_logs=True)
        )
        results["by_id_result"] = fal_client.result(APP, handle.request_id)
        """,
    )
    request_id = results["request_id"]
    assert results["first"]["type"] in {"Queued", "InProgress", "Completed"}
    assert results["output"]["seed"] == 1234
    assert results["output"]["images"][0]["height"] == 512

    after = results["after"]
    assert after["type"] == "Completed"
    assert after["error"] is None
    steps = {m for m in log_messages([after]) if m.startswith("step ")}
    assert steps == STEP_MESSAGES
    assert "inference_time" in after["metrics"]
    assert results["after_no_logs"]["type"] == "Completed"
    assert not results["after_no_logs"]["logs"]

    assert results["by_id_status"]["type"] == "Completed"
    assert log_messages([results["by_id_status"]]) == log_messages([after])
    assert results["by_id_result"] == results["output"]

    response_url, status_url, cancel_url = results["urls"]
    assert request_id in response_url
    assert status_url == f"{response_url}/status"
    assert cancel_url == f"{response_url}/cancel"
    response = fetch(server, response_url)
    assert response.status_code == 200
    assert response.headers["x-fal-request-id"] == request_id
    assert response.json() == results["output"]


def test_status_query_forms_over_plain_https(server: Any, tmp_path: Path) -> None:
    """``?logs=`` in both spellings, on both the app-only and the sub-path status URL."""
    results = run_client(
        server,
        tmp_path,
        """
        handle = fal_client.submit(APP, arguments=BASE)
        handle.get()
        results["request_id"] = handle.request_id
        """,
    )
    request_id = results["request_id"]
    headers = {"Authorization": "Key test-key"}
    app_only = f"{server.origin}/queue/fal-ai/flux-2/requests/{request_id}"
    sub_path = f"{server.origin}/queue/{APP}/requests/{request_id}"
    bodies: dict[tuple[str, str], dict[str, Any]] = {}
    with httpx.Client(verify=tls(server), timeout=30, headers=headers) as client:
        for name, root in (("app", app_only), ("sub", sub_path)):
            for logs in ("1", "true", "0", "false"):
                response = client.get(f"{root}/status", params={"logs": logs})
                assert response.status_code == 200, (name, logs, response.text)
                assert response.headers["x-fal-request-id"] == request_id
                bodies[name, logs] = response.json()
            result = client.get(root)
            assert result.status_code == 200, (name, result.text)
            assert result.headers["x-fal-request-id"] == request_id
            assert result.json()["seed"] == 1234

    for key, body in bodies.items():
        assert body["status"] == "COMPLETED", key
        assert body["request_id"] == request_id, key
        assert {"response_url", "status_url", "cancel_url", "logs"} <= set(body), key
        if key[1] in {"1", "true"}:
            messages = {entry["message"] for entry in body["logs"]}
            assert messages >= STEP_MESSAGES, key
        else:
            assert body["logs"] is None, key
    assert bodies["sub", "1"] == bodies["app", "1"]
    assert bodies["sub", "0"] == bodies["app", "0"]


# -- 4. cancel -------------------------------------------------------------------------------


def test_cancel_a_queued_request_and_a_completed_one(server: Any, tmp_path: Path) -> None:
    results = run_client(
        server,
        tmp_path,
        """
        arguments = {**BASE, "num_images": 4}
        handles = [fal_client.submit(APP, arguments=arguments) for _ in range(6)]
        last = handles[-1]
        results["before"] = status_json(last.status())
        last.cancel()
        results["after"] = status_json(last.status())
        results["get"] = expect_http_error(last.get)
        for other in handles[1:-1]:  # free the worker for the other tests
            try:
                other.cancel()
            except FalClientHTTPError:
                pass
        first = handles[0]
        results["first_output"] = first.get()
        results["again"] = expect_http_error(first.cancel)
        results["by_id_again"] = expect_http_error(lambda: fal_client.cancel(APP, first.request_id))
        """,
    )
    assert results["before"]["type"] == "Queued", "the sixth request should still be waiting"
    after = results["after"]
    assert after["type"] == "Completed"
    assert after["error"], after

    got = results["get"]
    assert got["class"] == "FalClientHTTPError", got
    assert got["status"] >= 400

    assert len(results["first_output"]["images"]) == 4
    for again in (results["again"], results["by_id_again"]):
        assert again["class"] == "FalClientHTTPError", again
        assert again["status"] == 400
        assert "ALREADY_COMPLETED" in again["body"]


# -- 5. async client -------------------------------------------------------------------------


def test_async_client(server: Any, tmp_path: Path) -> None:
    results = run_client(
        server,
        tmp_path,
        """
        async def main():
            client = fal_client.AsyncClient()
            results["run"] = await client.run(APP, arguments={**BASE, "seed": 5})
            updates = []

            async def on_update(status):
                updates.append(status_json(status))

            results["subscribe"] = await client.subscribe(
                APP,
                arguments={**BASE, "seed": 6},
                with_logs=True,
                on_queue_update=on_update,
            )
            results["updates"] = updates
            handle = await fal_client.submit_async(APP, arguments={**BASE, "seed": 7})
            results["status"] = status_json(await handle.status(with_logs=True))
            results["submit"] = await handle.get()
            results["run_async"], results["subscribe_async"] = await asyncio.gather(
                fal_client.run_async(APP, arguments={**BASE, "seed": 8}),
                fal_client.subscribe_async(APP, arguments={**BASE, "seed": 9}),
            )

        asyncio.run(main())
        """,
    )
    for key, seed in (
        ("run", 5),
        ("subscribe", 6),
        ("submit", 7),
        ("run_async", 8),
        ("subscribe_async", 9),
    ):
        output = results[key]
        assert output["seed"] == seed, key
        assert output["prompt"] == PROMPT, key
        (image,) = output["images"]
        assert (image["width"], image["height"]) == (512, 512), key
    assert results["status"]["type"] in {"Queued", "InProgress", "Completed"}
    assert results["updates"][-1]["type"] == "Completed"
    assert {m for m in log_messages(results["updates"]) if m.startswith("step ")} == STEP_MESSAGES


# -- 6 and 8. errors -------------------------------------------------------------------------

INVALID = {
    "guidance": ({"guidance_scale": 21}, ["body", "guidance_scale"], "less_than_equal"),
    "no_prompt": ({"prompt": None}, ["body", "prompt"], "missing"),
    "num_images": ({"num_images": 5}, ["body", "num_images"], "less_than_equal"),
}


def assert_fal_422(error: dict[str, Any], loc: list[str], type_: str) -> None:
    assert error["class"] == "FalClientHTTPError", error
    assert error["status"] == 422, error
    assert isinstance(error["message"], list), error
    matching = [e for e in error["message"] if e.get("loc") == loc]
    assert matching, error["message"]
    assert matching[0]["type"] == type_
    assert matching[0]["msg"]


def test_validation_errors_and_unknown_ids(server: Any, tmp_path: Path) -> None:
    cases = {name: change for name, (change, _, _) in INVALID.items()}
    results = run_client(
        server,
        tmp_path,
        f"""
        CASES = {cases!r}

        def arguments(change):
            args = {{**BASE, **change}}
            return {{k: v for k, v in args.items() if v is not None}}

        for name, change in CASES.items():
            results["run_" + name] = expect_http_error(
                lambda: fal_client.run(APP, arguments=arguments(change))
            )
            enqueued = []
            results["subscribe_" + name] = expect_http_error(
                lambda: fal_client.subscribe(
                    APP, arguments=arguments(change), on_enqueue=enqueued.append
                )
            )
            results["enqueued_" + name] = enqueued

        unknown = "00000000-0000-0000-0000-000000000000"
        results["unknown_status"] = expect_http_error(
            lambda: fal_client.status(APP, unknown, with_logs=True)
        )
        results["unknown_result"] = expect_http_error(lambda: fal_client.result(APP, unknown))
        results["unknown_cancel"] = expect_http_error(lambda: fal_client.cancel(APP, unknown))
        """,
    )
    for name, (_, loc, type_) in INVALID.items():
        assert_fal_422(results["run_" + name], loc, type_)
        assert_fal_422(results["subscribe_" + name], loc, type_)
        # the queue accepted the submission; the 422 came with the result
        assert len(results["enqueued_" + name]) == 1, name

    for key in ("unknown_status", "unknown_result", "unknown_cancel"):
        error = results[key]
        assert error["class"] == "FalClientHTTPError", (key, error)
        assert error["status"] == 404, (key, error)


# -- 7. webhooks -----------------------------------------------------------------------------


@dataclass
class Receiver:
    """Records POSTed JSON per path; answers ``failures[path]`` 500s before the first 200."""

    port: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    received: list[tuple[str, Any]] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, path: str, timeout: float = 30) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = [body for p, body in self.received if p == path]
            if got:
                return got
            time.sleep(0.05)
        pytest.fail(f"no webhook at {path} within {timeout} s; attempts {self.attempts}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            with state.lock:
                state.attempts[self.path] = state.attempts.get(self.path, 0) + 1
                fail = state.attempts[self.path] <= state.failures.get(self.path, 0)
                if not fail:
                    try:
                        body: Any = json.loads(raw)
                    except ValueError:
                        body = {"unparsable": raw.decode("utf-8", "replace")}
                    state.received.append((self.path, body))
            self.send_response(500 if fail else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_webhooks(server: Any, tmp_path: Path, receiver: Receiver) -> None:
    receiver.failures["/flaky"] = 2
    results = run_client(
        server,
        tmp_path,
        f"""
        ok = fal_client.submit(APP, arguments=BASE, webhook_url={receiver.url("/ok")!r})
        bad = fal_client.submit(
            APP, arguments={{**BASE, "num_images": 5}}, webhook_url={receiver.url("/error")!r}
        )
        flaky = fal_client.submit(
            APP, arguments={{**BASE, "seed": 77}}, webhook_url={receiver.url("/flaky")!r}
        )
        results["ids"] = {{"ok": ok.request_id, "bad": bad.request_id, "flaky": flaky.request_id}}
        """,
    )
    ids = results["ids"]

    (ok,) = receiver.wait_for("/ok")
    assert ok["request_id"] == ids["ok"]
    assert ok["status"] == "OK"
    payload = ok["payload"]
    assert payload["seed"] == 1234
    assert payload["prompt"] == PROMPT
    (image,) = payload["images"]
    assert (image["width"], image["height"]) == (512, 512)
    assert_downloadable(server, image, "PNG", "image/png")

    (error,) = receiver.wait_for("/error")
    assert error["request_id"] == ids["bad"]
    assert error["status"] == "ERROR"
    detail = error["payload"]["detail"]
    assert isinstance(detail, list)
    assert any(
        d["loc"] == ["body", "num_images"] and d["type"] == "less_than_equal" for d in detail
    ), detail

    (flaky,) = receiver.wait_for("/flaky")
    assert flaky["request_id"] == ids["flaky"]
    assert flaky["status"] == "OK"
    assert flaky["payload"]["seed"] == 77
    assert receiver.attempts["/flaky"] == 3


# -- 9. uploads ------------------------------------------------------------------------------


def test_upload_file_and_upload_image_give_urls_that_edits_accept(
    server: Any, tmp_path: Path
) -> None:
    """``upload_file`` and ``upload_image`` with the two URL constants pointed at the server
    (fal-protocol.md §9.1): the token, the fal_v3 upload, and the URLs used in an edit."""
    picture = tmp_path / "local picture.png"
    Image.new("RGB", (96, 96), (30, 200, 60)).save(picture)
    results = run_client(
        server,
        tmp_path,
        f"""
        import os
        import fal_client.client

        origin = "https://" + os.environ["FAL_RUN_HOST"]
        fal_client.client.REST_URL = origin  # storage/auth/token, storage/upload/initiate
        fal_client.client.CDN_URL = origin  # files/upload

        from_file = fal_client.upload_file({str(picture)!r})
        image = Image.new("RGB", (96, 96), (200, 30, 60))
        from_image = fal_client.upload_image(image, format="png")
        from_jpeg = fal_client.upload_image(image)  # jpeg, fal_client's default
        results["urls"] = [from_file, from_image, from_jpeg]
        results["edit"] = fal_client.run(
            APP, arguments={{**BASE, "image_urls": [from_file, from_image], "sync_mode": True}}
        )
        results["text"] = expect_http_error(
            lambda: fal_client.upload(b"not an image", "text/plain", repository="fal_v3",
                                      fallback_repository=[])
        )
        """,
    )
    urls = results["urls"]
    assert all(url.startswith(f"{server.origin}/uploads/") for url in urls), urls
    assert len(set(urls)) == 3
    downloaded = fetch(server, urls[0])
    assert downloaded.status_code == 200
    assert downloaded.content == picture.read_bytes()
    assert open_image(fetch(server, urls[2]).content).format == "JPEG"
    edited = results["edit"]
    assert edited["seed"] == 1234
    assert len(edited["images"]) == 1
    refused = results["text"]
    assert refused["class"] == "FalClientHTTPError", refused
    assert refused["status"] == 422
    assert "unsupported_image_format" in refused["body"]
