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

from core.errors import GenerationFailed
from pipelines.fake import FakeEngine
from pipelines.protocol import CancelCheck, StepCallback
from pipelines.types import EditRequest, EditResult
from service.app import create_app
from service.bootstrap import build_app
from service.jobs import Job, JobView
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.storage.local import LocalArtifactStore
from tests.helpers.fal import RUN_PATH, SUBMIT_PATH
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
        for name in ("health", "ready", "metrics")
    },
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
    """A backend that fails every call the routes make (its Redis went away)."""

    def submit(self, job: Job) -> None:
        raise RuntimeError("queue backend unavailable")

    def view(self, job_id: str) -> JobView | None:
        raise RuntimeError("queue backend unavailable")


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
    with serving(tmp_path / "failing", InMemoryJobQueue(), FailingEngine) as client:
        failed = submit(client, edit_body(prompt="fail please"))
        wait_completed(client, failed)
        check_result(client, answers.check, failed, 500)
        check("run", client.post(RUN_PATH, json=edit_body(prompt="fail again")), 500)
    with serving(tmp_path / "broken", InMemoryJobQueue(), broken_engine) as client:
        wait_for(lambda: client.get("/ready").status_code == 503, 10, "setup_failed")
        check("ready", client.get("/ready"), 503)
        lost = submit(client, edit_body())
        wait_completed(client, lost)
        check_result(client, answers.check, lost, 503)
        check("run", client.post(RUN_PATH, json=edit_body()), 503)
    _when_the_queue_fails(tmp_path / "no-queue", check)

    missing = answers.declared() - answers.seen
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


def _when_the_queue_fails(root: Path, check: Check) -> None:
    app = create_app(
        Settings(cache_dir=root, api_keys=KEY),
        queue=BrokenQueue(),
        store=LocalArtifactStore(root / "files"),
    )
    with TestClient(app, headers=AUTH, raise_server_exceptions=False) as client:
        check("submit", client.post(SUBMIT_PATH, json=edit_body()), 500)
        check("run", client.post(RUN_PATH, json=edit_body()), 500)
        for suffix in ("", "_subpath"):
            subpath = bool(suffix)
            for tail, name, method in (
                ("/status", "status", "GET"),
                ("/status/stream", "status_stream", "GET"),
                ("", "result", "GET"),
                ("/cancel", "cancel", "PUT"),
            ):
                response = client.request(method, request_path("any", tail, subpath=subpath))
                check(f"{name}{suffix}", response, 500)
        check("file", client.get("/files/any/thing.png"), 500)
