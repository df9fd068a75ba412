"""fal's queue protocol over HTTP: submit, status, logs, stream, result, cancel (§3-5)."""

from __future__ import annotations

import re
import threading
from datetime import datetime

import pytest
from service_helpers import (
    LOG_KEYS,
    STATUS_ORDER,
    SUBMIT_PATH,
    MakeService,
    Service,
    edit_body,
    parse_sse,
    request_path,
    step_messages,
    wait_for,
)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
URL_KEYS = ("response_url", "status_url", "cancel_url")


def _assert_urls(body: dict[str, object], request_id: str, base: str = "http://testserver") -> None:
    root = f"{base}/queue/fal-ai/flux-2/requests/{request_id}"
    assert body["response_url"] == root
    assert body["status_url"] == f"{root}/status"
    assert body["cancel_url"] == f"{root}/cancel"


# -- submit --------------------------------------------------------------------------------------


def test_submit_answers_fal_body(make_service: MakeService) -> None:
    svc = make_service(gated=True)
    response = svc.client.post(SUBMIT_PATH, json=edit_body())
    assert response.status_code == 200
    body = response.json()
    request_id = body["request_id"]
    assert UUID.match(request_id)
    assert body["status"] == "IN_QUEUE"
    assert body["queue_position"] == 0
    assert body["gateway_request_id"] == request_id
    _assert_urls(body, request_id)
    assert response.headers["x-fal-request-id"] == request_id


def test_submit_urls_use_public_url(make_service: MakeService) -> None:
    svc = make_service(settings={"public_url": "https://edit.example.com/"})
    body = svc.client.post(SUBMIT_PATH, json=edit_body()).json()
    _assert_urls(body, body["request_id"], base="https://edit.example.com")
    done = svc.wait_status(body["request_id"])
    _assert_urls(done, body["request_id"], base="https://edit.example.com")
    image_url = svc.result(body["request_id"]).json()["images"][0]["url"]
    assert image_url.startswith("https://edit.example.com/files/")


def test_submit_urls_are_followable(service: Service) -> None:
    """PY follows status_url/response_url verbatim."""
    body = service.client.post(SUBMIT_PATH, json=edit_body()).json()
    wait_for(lambda: service.client.get(body["status_url"]).status_code == 200, what="completion")
    result = service.client.get(body["response_url"])
    assert result.status_code == 200
    assert result.json()["seed"] == 7


# -- status ----------------------------------------------------------------------------------------


def test_queue_positions_count_down(make_service: MakeService) -> None:
    svc = make_service(gated=True, num_steps=3, step_seconds=0.02, max_batch_images=1)
    submitted = [svc.client.post(SUBMIT_PATH, json=edit_body()).json() for _ in range(3)]
    assert [s["queue_position"] for s in submitted] == [0, 1, 2]
    ids = [s["request_id"] for s in submitted]
    for position, request_id in enumerate(ids):
        response = svc.status(request_id)
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "IN_QUEUE"
        assert body["queue_position"] == position
        assert body["logs"] is None
        _assert_urls(body, request_id)
    svc.gate.open()  # type: ignore[union-attr]
    seen: list[object] = []

    def last_done() -> bool:
        body = svc.status(ids[-1]).json()
        seen.append(body.get("queue_position", body["status"]))
        return body["status"] == "COMPLETED"

    wait_for(last_done, what="the last job")
    positions = [p for p in seen if isinstance(p, int)]
    assert positions == sorted(positions, reverse=True), seen
    assert seen[-1] == "COMPLETED"
    for request_id in ids:
        assert svc.status(request_id).json()["status"] == "COMPLETED"


def test_in_progress_logs(make_service: MakeService) -> None:
    svc = make_service(num_steps=10, step_seconds=0.05)
    request_id = svc.submit()

    def running_with_steps() -> dict[str, object] | None:
        body = svc.status(request_id, logs="1").json()
        ok = body["status"] == "IN_PROGRESS" and step_messages(body["logs"])
        return body if ok else None

    wait_for(running_with_steps, what="a step log while running")
    for off in (None, "0", "false"):
        response = svc.status(request_id, logs=off)
        body = response.json()
        if body["status"] == "IN_PROGRESS":
            assert response.status_code == 202
            assert "logs" in body
            assert body["logs"] is None
            assert "queue_position" not in body
    for on in ("1", "true"):
        response = svc.status(request_id, logs=on)
        body = response.json()
        assert isinstance(body["logs"], list)
        for entry in body["logs"]:
            assert set(entry) == LOG_KEYS
            assert entry["level"] in {"STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"}
            assert entry["source"] == "USER"
            datetime.fromisoformat(entry["timestamp"])
        steps = step_messages(body["logs"])
        assert steps
        assert all(re.fullmatch(r"step \d+/10", s) for s in steps)
    done = svc.wait_status(request_id, logs="true")
    assert step_messages(done["logs"]) == [f"step {k}/10" for k in range(1, 11)]


def test_completed_status(service: Service) -> None:
    request_id = service.submit()
    body = service.wait_status(request_id)
    response = service.status(request_id)
    assert response.status_code == 200
    assert response.headers["x-fal-request-id"] == request_id
    body = response.json()
    assert body["status"] == "COMPLETED"
    assert body["logs"] is None
    assert isinstance(body["metrics"]["inference_time"], float)
    assert body["metrics"]["inference_time"] >= 0
    assert "error" not in body and "error_type" not in body
    _assert_urls(body, request_id)


@pytest.mark.parametrize("subpath", [False, True], ids=["app-only", "sub-path"])
def test_both_url_forms(make_service: MakeService, subpath: bool) -> None:
    svc = make_service(gated=True)
    queued, done = svc.submit(), svc.submit()
    status = svc.status(queued, subpath=subpath)
    assert status.status_code == 202
    assert status.json()["status"] == "IN_QUEUE"
    assert svc.result(queued, subpath=subpath).status_code == 400
    assert svc.cancel(queued, subpath=subpath).status_code == 202
    svc.gate.open()  # type: ignore[union-attr]
    svc.wait_status(done)
    assert svc.status(done, subpath=subpath).status_code == 200
    result = svc.result(done, subpath=subpath)
    assert result.status_code == 200
    assert result.json()["seed"] == 7
    stream = svc.client.get(request_path(done, "/status/stream", subpath=subpath))
    assert stream.status_code == 200
    assert [e["status"] for e in parse_sse(stream.text)] == ["COMPLETED"]
    assert svc.cancel(done, subpath=subpath).status_code == 400


# -- result ----------------------------------------------------------------------------------------


def test_result_before_completion_is_400(make_service: MakeService) -> None:
    svc = make_service(gated=True)
    request_id = svc.submit()
    response = svc.result(request_id)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str) and body["detail"]
    assert response.headers["x-fal-request-id"] == request_id


def test_result_is_raw_output(service: Service) -> None:
    request_id = service.submit()
    service.wait_status(request_id)
    response = service.result(request_id)
    assert response.status_code == 200
    assert response.headers["x-fal-request-id"] == request_id
    body = response.json()
    assert set(body) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert body["seed"] == 7
    assert body["prompt"] == "make it #FF5733"
    assert body["has_nsfw_concepts"] == [False]
    assert len(body["images"]) == 1
    assert "inference" in body["timings"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", "/status"), ("GET", ""), ("PUT", "/cancel"), ("GET", "/status/stream")],
    ids=["status", "result", "cancel", "stream"],
)
@pytest.mark.parametrize("subpath", [False, True], ids=["app-only", "sub-path"])
def test_unknown_id_is_404(service: Service, method: str, suffix: str, subpath: bool) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    response = service.client.request(method, request_path(unknown, suffix, subpath=subpath))
    assert response.status_code == 404
    assert response.json()["status"] == "NOT_FOUND"
    assert response.headers["x-fal-request-id"] == unknown


# -- status stream ------------------------------------------------------------------------------


def test_status_stream(make_service: MakeService) -> None:
    svc = make_service(gated=True, num_steps=8, step_seconds=0.03)
    request_id = svc.submit()
    events: list[dict[str, object]] = []
    timer = threading.Timer(0.3, svc.gate.open)  # type: ignore[union-attr]
    with svc.client.stream(
        "GET", request_path(request_id, "/status/stream"), params={"logs": "1"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-fal-request-id"] == request_id
        timer.start()
        text = "".join(response.iter_text())
    timer.join()
    events = parse_sse(text)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "IN_QUEUE"
    assert events[0]["queue_position"] == 0
    assert "IN_PROGRESS" in statuses
    assert [STATUS_ORDER[s] for s in statuses] == sorted(STATUS_ORDER[s] for s in statuses)
    assert statuses.count("COMPLETED") == 1 and statuses[-1] == "COMPLETED"  # then it closed
    assert text.rstrip().endswith("}")  # nothing after the COMPLETED event
    streamed = [entry for e in events for entry in e["logs"]]  # type: ignore[attr-defined]
    full = svc.logs(request_id)
    assert streamed == full
    assert step_messages(full) == [f"step {k}/8" for k in range(1, 9)]
    for event in events:
        assert event["request_id"] == request_id
        _assert_urls(event, request_id)


def test_status_stream_without_logs(service: Service) -> None:
    request_id = service.submit()
    service.wait_status(request_id)
    response = service.client.get(request_path(request_id, "/status/stream"))
    events = parse_sse(response.text)
    assert len(events) == 1
    assert events[0]["status"] == "COMPLETED"
    assert events[0]["logs"] is None
    assert "inference_time" in events[0]["metrics"]


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_queued_job(make_service: MakeService) -> None:
    svc = make_service(gated=True)
    request_id = svc.submit()
    response = svc.cancel(request_id)
    assert response.status_code == 202
    assert response.json() == {"status": "CANCELLATION_REQUESTED"}
    status = svc.status(request_id)
    assert status.status_code == 200
    body = status.json()
    assert body["status"] == "COMPLETED"
    assert body["error_type"] == "client_cancelled"
    assert body["error"]
    result = svc.result(request_id)
    assert result.status_code == 499
    assert result.json()["detail"]
    assert result.headers["x-fal-error-type"] == "client_cancelled"
    again = svc.cancel(request_id)
    assert again.status_code == 400
    assert again.json() == {"status": "ALREADY_COMPLETED"}
    svc.gate.open()  # type: ignore[union-attr]
    later = svc.submit()
    svc.wait_status(later)
    assert svc.gate.engine.calls == [(later,)]  # type: ignore[union-attr]  # never ran


def test_cancel_running_job(make_service: MakeService) -> None:
    svc = make_service(num_steps=40, step_seconds=0.05)
    request_id = svc.submit()
    wait_for(lambda: step_messages(svc.logs(request_id)), what="the first step")
    response = svc.cancel(request_id)
    assert response.status_code == 202
    assert response.json() == {"status": "CANCELLATION_REQUESTED"}
    body = svc.wait_status(request_id, logs="1", timeout=1.5)  # 40 steps would take 2 s
    assert body["error_type"] == "client_cancelled"
    assert body["error"]
    assert len(step_messages(body["logs"])) < 40
    result = svc.result(request_id)
    assert result.status_code == 499
    assert result.json()["detail"]
    assert list(svc.files.glob(f"{request_id}/*")) == []


def test_cancel_completed_job(service: Service) -> None:
    request_id = service.submit()
    service.wait_status(request_id)
    response = service.cancel(request_id)
    assert response.status_code == 400
    assert response.json() == {"status": "ALREADY_COMPLETED"}
    assert response.headers["x-fal-request-id"] == request_id
    assert service.result(request_id).status_code == 200
