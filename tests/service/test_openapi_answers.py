"""Every answer the OpenAPI document declares is produced for real, and conforms to it (#12).

Each declared status of each operation is provoked on an in-process app (the fake engine, API
keys on) and checked against its ``/openapi.json`` with schemathesis' checks: the status is
declared for the operation, so is the Content-Type, the body matches the schema and the required
headers are there. The fuzzer (``test_fuzz_openapi.py``) cannot get here: it knows no request
id, and its generated inputs never succeed. The last assertion is that nothing declared went
unproduced, but for the few answers listed in ``NOT_PRODUCED``, with why.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_helpers import EngineGate, edit_body, parse_sse, request_path, wait_for
from starlette.testclient import TestClient

from core.errors import GenerationFailed, QueueUnavailable
from pipelines.fake import FakeEngine
from pipelines.protocol import CancelCheck, StepCallback
from pipelines.types import EditRequest, EditResult
from service.app import create_app
from service.bootstrap import build_app
from service.endpoints import ENDPOINTS, FLASH_EDIT
from service.jobs import Job, JobView
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.storage.base import Artifact
from service.storage.local import LocalArtifactStore
from tests.helpers.fal import RUN_PATH, SUBMIT_PATH
from tests.helpers.images import png_bytes
from tests.helpers.services import fake_components

Check = Any  # Answers.check
KEY = "answers-key"
AUTH = {"Authorization": f"Key {KEY}"}
MAX_BODY = 64 * 1024
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Declared, and true, but not produced here: (operation, status) -> why.
NOT_PRODUCED = {
    ("run", "499"): "a sync run's job cancelled by another caller; the run answers the job's "
    "outcome with outcome_response(), as the result route does, whose 499 is produced here",
    **{
        (name, "500"): "only an unexpected exception answers 500 here, and nothing in this "
        "route can raise one; declared because the unexpected-error middleware guards every route"
        for name in ("health", "ready", "metrics", "openai_models", "openai_model")
    },
    ("upload_token", "500"): "signing a token touches nothing that can fail; declared because "
    "the unexpected-error middleware guards every route",
    ("upload_initiate", "500"): "a single upload's initiate signs a URL and stores nothing",
    **{
        ("openai_images_generations", status): "a generation's job ends through the same "
        "outcome_error() and queue as an edit's, whose answers the edits produce here"
        for status in ("429", "499", "500", "503", "504")
    },
    ("openai_images_edits", "499"): "an edit's job cancelled by another caller (the client "
    "that went away gets nothing); the answer is outcome_error(), which the 500/503/504 here "
    "go through too",
}


class Answers:
    """Checks responses against the published document and remembers what was seen."""

    def __init__(self, client: TestClient) -> None:
        self.document: dict[str, Any] = client.get("/openapi.json").json()
        self.schema = schemathesis.openapi.from_dict(self.document)
        self.seen: set[tuple[str, str]] = set()

    def check(self, operation_id: str, response: httpx.Response, status: int) -> httpx.Response:
        assert response.status_code == status, (operation_id, response.text)
        operation = self.schema.find_operation_by_id(operation_id)
        pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(operation.path))
        sent = re.fullmatch(pattern, response.request.url.path)
        assert sent is not None, (operation.path, response.request.url.path)
        case = operation.Case(path_parameters=sent.groupdict())
        case.validate_response(response, checks=CHECKS)
        self.seen.add((operation_id, str(status)))
        return response

    def declared(self) -> set[tuple[str, str]]:
        return {
            (operation["operationId"], status)
            for item in self.document["paths"].values()
            for operation in item.values()
            for status in operation["responses"]
        }


class RecordingQueue(InMemoryJobQueue):
    """Remembers the ids of submitted jobs (a sync run's id is only known once it answers)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.submitted: list[str] = []

    def submit(self, job: Job) -> None:
        super().submit(job)
        self.submitted.append(job.id)


class BrokenQueue(InMemoryJobQueue):
    """A backend that fails every call the routes make with ``error``: a RuntimeError (a bug:
    500) or QueueUnavailable (Redis went away: 503)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def submit(self, job: Job) -> None:
        raise self.error

    def view(self, job_id: str) -> JobView | None:
        raise self.error


class BrokenStore(LocalArtifactStore):
    """A file store whose every read and write fails with ``error``."""

    def __init__(self, root: Path, error: Exception) -> None:
        super().__init__(root)
        self.error = error

    def put(self, owner: str, name: str, data: bytes, content_type: str) -> str:
        raise self.error

    def open(self, key: str) -> Artifact:
        raise self.error


class FailingEngine(FakeEngine):
    """Fails a batch whose prompt says ``fail`` (the job fails with 500, the worker goes on)."""

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        if any("fail" in request.prompt for request in batch):
            raise GenerationFailed("the engine failed")
        return super().run(batch, on_step, should_cancel)


def broken_engine() -> FakeEngine:
    raise RuntimeError("no weights")


@contextmanager
def serving(root: Path, queue: InMemoryJobQueue, engine: Any = FakeEngine) -> Iterator[TestClient]:
    """The app with keys on and a small body limit; a gated engine is opened on the way out."""
    parts = fake_components(root, engine=engine, queue=queue, api_keys=KEY, max_body_bytes=MAX_BODY)
    with TestClient(build_app(parts), headers=AUTH) as client:
        try:
            yield client
        finally:
            if isinstance(engine, EngineGate):
                engine.open()  # a worker still waiting for its engine stops at once


def wait_completed(client: TestClient, request_id: str) -> None:
    def completed() -> bool:
        status = client.get(request_path(request_id, "/status"))
        return status.json().get("status") == "COMPLETED"

    wait_for(completed, 10, f"{request_id} completed")


def check_result(client: TestClient, check: Check, request_id: str, status: int) -> None:
    """The result, under both URL forms."""
    check("result", client.get(request_path(request_id)), status)
    check("result_subpath", client.get(request_path(request_id, subpath=True)), status)


def submit(client: TestClient, body: dict[str, Any], **headers: str) -> str:
    response = client.post(SUBMIT_PATH, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["request_id"])


def test_every_declared_answer_is_produced_and_conforms(tmp_path: Path) -> None:
    gate = EngineGate(closed=True, num_steps=2)
    queue = RecordingQueue(max_queued=3)
    with serving(tmp_path / "main", queue, gate) as client:
        answers = Answers(client)
        check = answers.check
        _while_the_worker_starts(client, check, gate, queue)
        _once_it_runs(client, check)
        _refused_at_the_edge(client, check)
        _static(client, check)
        _uploads(client, check)
        _openai(client, check)
        _family(client, check)
    with serving(tmp_path / "failing", InMemoryJobQueue(), FailingEngine) as client:
        failed = submit(client, edit_body(prompt="fail please"))
        wait_completed(client, failed)
        check_result(client, answers.check, failed, 500)
        check("run", client.post(RUN_PATH, json=edit_body(prompt="fail again")), 500)
        check("openai_images_edits", openai_edit(client, prompt="fail, OpenAI"), 500)
    with serving(tmp_path / "broken", InMemoryJobQueue(), broken_engine) as client:
        wait_for(lambda: client.get("/ready").status_code == 503, 10, "setup_failed")
        check("ready", client.get("/ready"), 503)
        lost = submit(client, edit_body())
        wait_completed(client, lost)
        check_result(client, answers.check, lost, 503)
        check("run", client.post(RUN_PATH, json=edit_body()), 503)
        check("openai_images_edits", openai_edit(client), 503)
    _when_the_queue_fails(tmp_path / "no-queue", check, RuntimeError("backend gone"), 500)
    _when_the_queue_fails(tmp_path / "no-redis", check, QueueUnavailable("redis away"), 503)

    # The rest of the FLUX.2 family answers through the flash edit's handlers (one per route
    # kind, made per endpoint): what the flash edit's produce, theirs declare too.
    missing = {
        (_counterpart(operation), status)
        for operation, status in answers.declared() - answers.seen
        if (_counterpart(operation), status) not in answers.seen
    }
    assert missing == set(NOT_PRODUCED), sorted(missing - set(NOT_PRODUCED))
    assert not set(NOT_PRODUCED) & answers.seen  # listed but produced: take it off the list


def _while_the_worker_starts(
    client: TestClient, check: Check, gate: EngineGate, queue: RecordingQueue
) -> None:
    """The engine is still loading: requests wait in the queue (at most 3)."""
    check("ready", client.get("/ready"), 503)
    queued = check("submit", client.post(SUBMIT_PATH, json=edit_body()), 200).json()
    request_id = queued["request_id"]
    for suffix in ("", "_subpath"):
        path = request_path(request_id, "/status", subpath=bool(suffix))
        check(f"status{suffix}", client.get(path, params={"logs": "1"}), 202)
        check(f"result{suffix}", client.get(request_path(request_id, subpath=bool(suffix))), 400)
    timed_out = submit(client, edit_body(), **{"X-Fal-Request-Timeout": "0.01"})
    cancelled = submit(client, edit_body())
    check("submit", client.post(SUBMIT_PATH, json=edit_body()), 429)  # 3 queued: full
    check("openai_images_edits", openai_edit(client), 429)
    check("cancel", client.put(request_path(cancelled, "/cancel")), 202)
    check("cancel_subpath", client.put(request_path(request_id, "/cancel", subpath=True)), 202)
    check_result(client, check, cancelled, 499)
    check("status", client.get(request_path(cancelled, "/status")), 200)
    submit(client, edit_body())  # the queue holds 2 again

    # a sync run waits for its job: open the gate once it is queued
    runs = len(queue.submitted)
    answer: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answer.append(client.post(RUN_PATH, json=edit_body())))
    thread.start()
    try:
        wait_for(lambda: len(queue.submitted) > runs, 10, "the sync run's job")
        check("run", client.post(RUN_PATH, json=edit_body()), 429)  # full again, with the run's
        time.sleep(0.05)  # past the first job's X-Fal-Request-Timeout
    finally:  # even when a check failed: a waiting sync run would hold the client forever
        gate.open()
        thread.join(timeout=20)
    check("run", answer[0], 200)
    wait_completed(client, timed_out)
    check_result(client, check, timed_out, 504)
    check("ready", client.get("/ready"), 200)


def _once_it_runs(client: TestClient, check: Check) -> None:
    done = submit(client, edit_body())
    wait_completed(client, done)
    for suffix in ("", "_subpath"):
        subpath = bool(suffix)
        check(f"status{suffix}", client.get(request_path(done, "/status", subpath=subpath)), 200)
        stream = client.get(request_path(done, "/status/stream", subpath=subpath))
        check(f"status_stream{suffix}", stream, 200)
        assert [event["status"] for event in parse_sse(stream.text)] == ["COMPLETED"]
        output = check(f"result{suffix}", client.get(request_path(done, subpath=subpath)), 200)
        check(f"cancel{suffix}", client.put(request_path(done, "/cancel", subpath=subpath)), 400)
        for tail, name, method in (
            ("/status", "status", "GET"),
            ("/status/stream", "status_stream", "GET"),
            ("", "result", "GET"),
            ("/cancel", "cancel", "PUT"),
        ):
            unknown = client.request(method, request_path("unknown", tail, subpath=subpath))
            check(f"{name}{suffix}", unknown, 404)
            anonymous = client.request(
                method, request_path(done, tail, subpath=subpath), headers={"Authorization": ""}
            )
            check(f"{name}{suffix}", anonymous, 401)
    image = httpx.URL(output.json()["images"][0]["url"]).path
    check("file", client.get(image), 200)
    check("file", client.get(image + "x"), 404)
    check("file", client.get(image, headers={"Authorization": "Key wrong"}), 401)
    wrong_file = submit(client, edit_body(image_urls=["ftp://example.com/x.png"]))
    wait_completed(client, wrong_file)
    check_result(client, check, wrong_file, 422)
    too_late = {"X-Fal-Request-Timeout": "-1"}  # the start deadline has passed already
    check("run", client.post(RUN_PATH, json=edit_body(), headers=too_late), 504)


def _refused_at_the_edge(client: TestClient, check: Check) -> None:
    for name, path in (("run", RUN_PATH), ("submit", SUBMIT_PATH)):
        check(name, client.post(path, json=edit_body(), headers={"Authorization": ""}), 401)
        check(name, client.post(path, content=b'{"prompt": NaN}'), 422)
        check(name, client.post(path, json=edit_body(image_urls=["x" * MAX_BODY])), 413)
        bad_priority = client.post(path, json=edit_body(), headers={"X-Fal-Queue-Priority": "hi"})
        check(name, bad_priority, 422)
    check("run", client.post(RUN_PATH, json=edit_body(num_images=5)), 422)
    check("submit", client.post(SUBMIT_PATH, json=edit_body(), params={"fal_webhook": "x"}), 422)


def _static(client: TestClient, check: Check) -> None:
    check("health", client.get("/health"), 200)
    check("metrics", client.get("/metrics"), 200)


def _when_the_queue_fails(root: Path, check: Check, error: Exception, status: int) -> None:
    app = create_app(
        Settings(cache_dir=root, api_keys=KEY),
        queue=BrokenQueue(error),
        store=BrokenStore(root / "files", error),
    )
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as client:
        check("submit", client.post(SUBMIT_PATH, json=edit_body()), status)
        check("run", client.post(RUN_PATH, json=edit_body()), status)
        for suffix in ("", "_subpath"):
            subpath = bool(suffix)
            for tail, name, method in (
                ("/status", "status", "GET"),
                ("/status/stream", "status_stream", "GET"),
                ("", "result", "GET"),
                ("/cancel", "cancel", "PUT"),
            ):
                response = client.request(method, request_path("any", tail, subpath=subpath))
                check(f"{name}{suffix}", response, status)
        check("file", client.get("/files/any/thing.png"), status)
        check("openai_images_edits", openai_edit(client), status)
        upload_id = "0" * 32
        check("upload", client.get(f"/uploads/{upload_id}"), status)
        check("upload_initiate_multipart", client.post(MULTIPART), status)
        signed = client.post(INITIATE).json()["upload_url"]
        check("upload_put", client.put(signed, content=png_bytes()), status)
        part = _with_path(signed, "/1")
        check("upload_put_part", client.put(part, content=png_bytes()), status)
        check("upload_complete", client.post(_with_path(signed, "/complete"), json=PARTS), status)
        bearer = _bearer(client)
        check("files_upload", client.post(FILES, content=png_bytes(), headers=bearer), status)
        check("files_upload_multipart", client.post(f"{FILES}/multipart", headers=bearer), status)
        base = f"/uploads/{upload_id}/multipart/{upload_id}"
        check("files_upload_part", client.put(f"{base}/1", content=b"x", headers=bearer), status)
        completed = client.post(f"{base}/complete", json=PARTS, headers=bearer)
        check("files_upload_complete", completed, status)


# -- uploads and the OpenAI routes ----------------------------------------------------------------

INITIATE = "/storage/upload/initiate"
MULTIPART = "/storage/upload/initiate-multipart"
FILES = "/files/upload"
PARTS = {"parts": [{"partNumber": 1, "etag": "x"}]}
TOO_BIG = b"x" * (MAX_BODY + 1)


def _with_path(url: str, tail: str) -> str:
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path=parsed.path + tail))


def _bearer(client: TestClient) -> dict[str, str]:
    token = client.post("/storage/auth/token").json()["token"]
    return {"Authorization": f"Bearer {token}"}


def openai_edit(client: TestClient, prompt: str = "paint it", **fields: str) -> httpx.Response:
    data = {"prompt": prompt, "size": "512x512", **fields}
    files = {"image": ("car.png", png_bytes(), "image/png")}
    return client.post("/v1/images/edits", data=data, files=files)


def _uploads(client: TestClient, check: Check) -> None:
    anonymous = {"Authorization": ""}
    for name, path in (("upload_initiate", INITIATE), ("upload_initiate_multipart", MULTIPART)):
        check(name, client.post(path, json={"content_type": "image/png"}), 200)
        check(name, client.post(path, headers=anonymous), 401)
        check(name, client.post(path, content=b'{"file_name": NaN}'), 422)
        check(name, client.post(path, content=TOO_BIG), 413)
    # a signed URL: the JS client
    signed = client.post(INITIATE).json()["upload_url"]
    stored = check("upload_put", client.put(signed, content=png_bytes(), headers=anonymous), 200)
    check("upload_put", client.put(signed.replace("token=", "token=x")), 401)
    check("upload_put", client.put(_with_path(signed, "x")), 404)
    check("upload_put", client.put(signed, content=TOO_BIG), 413)
    check("upload_put", client.put(signed, content=b"not an image"), 422)
    check("upload", client.get(httpx.URL(stored.json()["file_url"]).path), 200)
    check("upload", client.get("/uploads/" + "0" * 32), 404)
    check("upload", client.get("/uploads/" + "0" * 32, headers=anonymous), 401)
    parts = client.post(MULTIPART).json()["upload_url"]
    part = check("upload_put_part", client.put(_with_path(parts, "/1"), content=png_bytes()), 200)
    check("upload_put_part", client.put(_with_path(parts, "/0"), content=b"x"), 422)
    check("upload_put_part", client.put(_with_path(signed, "/1"), content=b"x"), 404)  # not begun
    check("upload_put_part", client.put(_with_path(parts, "/2").replace("token=", "token=x")), 401)
    check("upload_put_part", client.put(_with_path(parts, "/2"), content=TOO_BIG), 413)
    complete = _with_path(parts, "/complete")
    check("upload_complete", client.post(complete, json={"parts": []}), 422)
    check("upload_complete", client.post(complete.replace("token=", "token=x"), json=PARTS), 401)
    check("upload_complete", client.post(complete, content=TOO_BIG), 413)
    done = {"parts": [{"partNumber": 1, "etag": part.json()["etag"]}]}
    check("upload_complete", client.post(complete, json=done), 200)
    check("upload_complete", client.post(_with_path(signed, "x/complete"), json=done), 404)
    # an upload token: Python's fal_v3
    check("upload_token", client.post("/storage/auth/token", headers=anonymous), 401)
    check("upload_token", client.post("/storage/auth/token"), 200)
    bearer = _bearer(client)
    check("files_upload", client.post(FILES, content=png_bytes(), headers=bearer), 200)
    check("files_upload", client.post(FILES, content=png_bytes()), 401)  # the API key is no token
    check("files_upload", client.post(FILES, content=TOO_BIG, headers=bearer), 413)
    check("files_upload", client.post(FILES, content=b"not an image", headers=bearer), 422)
    check("files_upload_multipart", client.post(f"{FILES}/multipart", headers=anonymous), 401)
    begun = check("files_upload_multipart", client.post(f"{FILES}/multipart", headers=bearer), 200)
    upload_id = begun.json()["uploadId"]
    base = f"/uploads/{upload_id}/multipart/{upload_id}"
    tag = check(
        "files_upload_part", client.put(f"{base}/1", content=png_bytes(), headers=bearer), 200
    )
    check("files_upload_part", client.put(f"{base}/0", content=b"x", headers=bearer), 422)
    check("files_upload_part", client.put(f"{base}/1", content=b"x"), 401)
    check("files_upload_part", client.put(f"{base}x/1", content=b"x", headers=bearer), 404)
    check("files_upload_part", client.put(f"{base}/2", content=TOO_BIG, headers=bearer), 413)
    complete = f"{base}/complete"
    check("files_upload_complete", client.post(complete, json={"parts": []}, headers=bearer), 422)
    check("files_upload_complete", client.post(complete, json=PARTS), 401)
    check(
        "files_upload_complete", client.post(f"{base}x/complete", json=PARTS, headers=bearer), 404
    )
    check("files_upload_complete", client.post(complete, content=TOO_BIG, headers=bearer), 413)
    done = {"parts": [{"partNumber": 1, "etag": tag.json()["etag"]}]}
    check("files_upload_complete", client.post(complete, json=done, headers=bearer), 200)


def _openai(client: TestClient, check: Check) -> None:
    anonymous = {"Authorization": ""}
    check("openai_models", client.get("/v1/models"), 200)
    check("openai_models", client.get("/v1/models", headers=anonymous), 401)
    check("openai_model", client.get("/v1/models/flux-2-flash-edit"), 200)
    check("openai_model", client.get("/v1/models/dall-e-3"), 404)
    check("openai_model", client.get("/v1/models/a%0Ab"), 404)  # no route matches: still OpenAI's
    check("openai_model", client.get("/v1/models/dall-e-3", headers=anonymous), 401)
    edits, generations = "openai_images_edits", "openai_images_generations"
    check(edits, openai_edit(client), 200)
    streamed = check(edits, openai_edit(client, stream="true", partial_images="1"), 200)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    check(edits, client.post("/v1/images/edits", data={"prompt": "no image"}, files={}), 400)
    check(edits, openai_edit(client, model="dall-e-3"), 404)
    check(edits, client.post("/v1/images/edits", headers=anonymous), 401)
    check(edits, client.post("/v1/images/edits", content=TOO_BIG), 413)
    check(edits, _late_edit(client), 504)
    check(generations, client.post("/v1/images/generations", json={"prompt": "a cat"}), 200)
    unknown = {"prompt": "a cat", "model": "dall-e-3"}
    check(generations, client.post("/v1/images/generations", json=unknown), 404)
    check(generations, client.post("/v1/images/generations", content=b'{"n": NaN}'), 400)
    check(generations, client.post("/v1/images/generations", headers=anonymous), 401)
    check(generations, client.post("/v1/images/generations", content=TOO_BIG), 413)


def _counterpart(operation_id: str) -> str:
    """The flash edit's operation for a family operation (``run_flux_2_lora`` -> ``run``,
    ``status_subpath_flux_2_edit`` -> ``status_subpath``); others map to themselves."""
    return re.sub(r"^(\w+?)(_subpath)?_flux_2\w*$", r"\1\2", operation_id)


def _family(client: TestClient, check: Check) -> None:
    """Every other endpoint of the family answers its own run, submit and request routes,
    with its own output and input schemas."""
    for endpoint in ENDPOINTS.values():
        if endpoint is FLASH_EDIT:
            continue
        slug = endpoint.slug.replace("-", "_")
        body = edit_body() if endpoint.max_references else {"prompt": "a fox", "seed": 7}
        body["image_size"] = {"width": 512, "height": 512}
        check(f"run_{slug}", client.post(f"/{endpoint.id}", json=body), 200)
        check(f"run_{slug}", client.post(f"/{endpoint.id}", json={}), 422)
        queued = client.post(f"/queue/{endpoint.id}", json=body)
        check(f"submit_{slug}", queued, 200)
        if endpoint.id == endpoint.app_id:
            continue  # its request routes are the app's, checked above
        base = f"/queue/{endpoint.id}/requests/{queued.json()['request_id']}"
        status = f"{base}/status"
        wait_for(lambda url=status: client.get(url).status_code == 200, 10, "completed")
        check(f"status_subpath_{slug}", client.get(status), 200)
        check(f"result_subpath_{slug}", client.get(base), 200)


def _late_edit(client: TestClient) -> httpx.Response:
    """An edit whose start deadline has passed already: 504."""
    files = {"image": ("car.png", png_bytes(), "image/png")}
    return client.post(
        "/v1/images/edits",
        data={"prompt": "too late", "size": "512x512"},
        files=files,
        headers={"X-Fal-Request-Timeout": "-1"},
    )
