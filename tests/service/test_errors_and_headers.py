"""fal's error bodies (§12) and headers (§6): validation, input failures, priority, limits, CORS."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from service_helpers import (
    RUN_PATH,
    SUBMIT_PATH,
    MakeService,
    Service,
    data_uri,
    edit_body,
    free_port,
    png_bytes,
    request_path,
)
from starlette.testclient import TestClient

from service.app import create_app
from service.inputs import FetchPolicy
from service.jobs import JobView
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.storage.local import LocalArtifactStore

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _problems(body: dict[str, Any]) -> list[dict[str, Any]]:
    """fal's ``{"detail": [ErrorObject, ...]}``, checked for shape."""
    assert set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, list) and detail, body
    for problem in detail:
        assert set(problem) <= {"loc", "msg", "type", "url", "ctx", "input"}, problem
        assert {"loc", "msg", "type", "url"} <= set(problem), problem
        assert isinstance(problem["loc"], list) and problem["loc"][0] in ("body", "header")
        assert isinstance(problem["msg"], str) and problem["msg"]
        assert problem["url"] == f"https://docs.fal.ai/errors/#{problem['type']}"
    return detail


# -- request validation (sync run) ---------------------------------------------------------------


def test_guidance_scale_too_large(service: Service) -> None:
    response = service.client.post(RUN_PATH, json=edit_body(guidance_scale=21))
    assert response.status_code == 422
    assert response.headers["x-fal-billable-units"] == "0"
    assert response.headers["x-fal-request-id"]
    [problem] = _problems(response.json())
    assert problem == {
        "loc": ["body", "guidance_scale"],
        "msg": "Input should be less than or equal to 20",
        "type": "less_than_equal",
        "url": "https://docs.fal.ai/errors/#less_than_equal",
        "ctx": {"le": 20},
        "input": 21,
    }


def test_missing_prompt(service: Service) -> None:
    body = edit_body()
    del body["prompt"]
    response = service.client.post(RUN_PATH, json=body)
    assert response.status_code == 422
    [problem] = _problems(response.json())
    assert problem["loc"] == ["body", "prompt"]
    assert problem["type"] == "missing"


def test_missing_image_urls(service: Service) -> None:
    body = edit_body()
    del body["image_urls"]
    response = service.client.post(RUN_PATH, json=body)
    assert response.status_code == 422
    [problem] = _problems(response.json())
    assert (problem["loc"], problem["type"]) == (["body", "image_urls"], "missing")


def test_num_images_too_many(service: Service) -> None:
    response = service.client.post(RUN_PATH, json=edit_body(num_images=5))
    assert response.status_code == 422
    [problem] = _problems(response.json())
    assert problem["loc"] == ["body", "num_images"]
    assert problem["type"] == "less_than_equal"
    assert problem["ctx"] == {"le": 4}
    assert problem["input"] == 5


def test_image_size_out_of_range(service: Service) -> None:
    """pydantic reports each member of the ``ImageSize | preset`` union: the ImageSize branch
    at ``["body", "image_size", "ImageSize", "width"]`` plus a ``literal_error`` for the presets."""
    response = service.client.post(
        RUN_PATH, json=edit_body(image_size={"width": 100, "height": 600})
    )
    assert response.status_code == 422
    problems = _problems(response.json())
    found = {(tuple(p["loc"]), p["type"]) for p in problems}
    assert (("body", "image_size", "ImageSize", "width"), "greater_than_equal") in found
    width = next(p for p in problems if p["loc"][-1] == "width")
    assert width["ctx"] == {"ge": 512}
    assert width["input"] == 100
    assert not any(p["loc"][-1] == "height" for p in problems)  # 600 is fine
    assert all(p["loc"][:2] == ["body", "image_size"] for p in problems)


@pytest.mark.parametrize(
    ("overrides", "loc", "type_"),
    [
        ({"output_format": "gif"}, ["body", "output_format"], "literal_error"),
        ({"prompt": ""}, ["body", "prompt"], "string_too_short"),
        ({"image_urls": []}, ["body", "image_urls"], "too_short"),
        ({"guidance_scale": -0.5}, ["body", "guidance_scale"], "greater_than_equal"),
        ({"num_images": 0}, ["body", "num_images"], "greater_than_equal"),
        ({"image_size": {"width": 1024, "height": 4096}}, ["body", "image_size"], None),
    ],
)
def test_other_validation_errors(
    service: Service, overrides: dict[str, Any], loc: list[Any], type_: str | None
) -> None:
    response = service.client.post(RUN_PATH, json=edit_body(**overrides))
    assert response.status_code == 422
    problems = _problems(response.json())
    assert any(p["loc"][: len(loc)] == loc and type_ in (None, p["type"]) for p in problems)


@pytest.mark.parametrize("path", [RUN_PATH, SUBMIT_PATH], ids=["run", "submit"])
def test_bad_json_body(service: Service, path: str) -> None:
    response = service.client.post(
        path, content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    [problem] = _problems(response.json())
    assert problem["type"] == "json_invalid"
    assert response.headers["x-fal-request-id"]


# -- validation of queued input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{"guidance_scale": 21}, {"num_images": 5}, {"prompt": None}, {"output_format": "gif"}],
    ids=["guidance", "num_images", "prompt", "format"],
)
def test_submit_invalid_input_completes_with_422(
    service: Service, overrides: dict[str, Any]
) -> None:
    body = {k: v for k, v in edit_body(**overrides).items() if v is not None}
    response = service.client.post(SUBMIT_PATH, json=body)
    assert response.status_code == 200
    submitted = response.json()
    request_id = submitted["request_id"]
    assert UUID.match(request_id)
    assert {"response_url", "status_url", "cancel_url", "queue_position"} <= set(submitted)
    status = service.status(request_id)
    assert status.status_code == 200
    status_body = status.json()
    assert status_body["status"] == "COMPLETED"
    result = service.result(request_id)
    assert result.status_code == 422
    problems = _problems(result.json())
    assert status_body["error"] == problems[0]["msg"]
    assert status_body["error_type"] == problems[0]["type"]
    assert result.headers["x-fal-error-type"] == problems[0]["type"]
    # the queue's 422 is the sync run's 422, byte for byte
    sync = service.client.post(RUN_PATH, json=body)
    assert sync.status_code == 422
    assert result.json() == sync.json()


# -- reference images that cannot be used -------------------------------------------------------


def _job_problem(service: Service, image_urls: list[str]) -> dict[str, Any]:
    request_id = service.submit(edit_body(image_urls=image_urls))
    status = service.wait_status(request_id)
    result = service.result(request_id)
    assert result.status_code == 422, result.text
    [problem] = _problems(result.json())
    assert status["error_type"] == problem["type"]
    assert result.headers["x-fal-error-type"] == problem["type"]
    return problem


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x.png", "not a url", "file:///etc/passwd", "/etc/passwd"]
)
def test_image_url_with_wrong_scheme(service: Service, url: str) -> None:
    problem = _job_problem(service, [url])
    assert problem["type"] == "file_download_error"
    assert problem["loc"] == ["body", "image_urls", 0]
    assert problem["input"] == url


def test_unreachable_url_is_refused_by_default(service: Service) -> None:
    """Loopback is internal: the SSRF guard refuses it (still a file_download_error)."""
    url = f"http://127.0.0.1:{free_port()}/x.png"
    problem = _job_problem(service, [data_uri(), url])
    assert problem["type"] == "file_download_error"
    assert problem["loc"] == ["body", "image_urls", 1]
    assert problem["input"] == url


def test_unreachable_url(make_service: MakeService) -> None:
    svc = make_service(fetch_policy=FetchPolicy(allow_all=True, connect_timeout=2))
    url = f"http://127.0.0.1:{free_port()}/x.png"
    started = time.monotonic()
    problem = _job_problem(svc, [url])
    assert time.monotonic() - started < 5
    assert problem == {
        "loc": ["body", "image_urls", 0],
        "msg": problem["msg"],
        "type": "file_download_error",
        "url": "https://docs.fal.ai/errors/#file_download_error",
        "input": url,
    }
    assert problem["msg"].startswith("File download error")


def test_garbage_data_uri(service: Service) -> None:
    problem = _job_problem(service, [data_uri(b"\x00\x01 definitely not an image " * 20)])
    assert problem["type"] == "unsupported_image_format"
    assert problem["loc"] == ["body", "image_urls", 0]
    assert set(problem["ctx"]["supported_formats"]) >= {"png", "jpeg", "webp"}


def test_truncated_png(service: Service) -> None:
    data = png_bytes(256, 256)
    problem = _job_problem(service, [data_uri(data[: len(data) // 2])])
    assert problem["type"] in {"image_load_error", "unsupported_image_format"}
    assert problem["loc"] == ["body", "image_urls", 0]


def test_tiny_reference(service: Service) -> None:
    problem = _job_problem(service, [data_uri(png_bytes(8, 8))])
    assert problem["type"] == "image_too_small"
    assert problem["loc"] == ["body", "image_urls", 0]


def test_one_bad_job_does_not_fail_its_batch(make_service: MakeService) -> None:
    svc = make_service(gated=True)
    good = svc.submit()
    bad = svc.submit(edit_body(image_urls=["ftp://x/y.png"]))
    svc.gate.open()  # type: ignore[union-attr]
    svc.wait_status(good)
    svc.wait_status(bad)
    assert svc.result(good).status_code == 200
    assert svc.result(bad).status_code == 422


# -- headers -------------------------------------------------------------------------------------


def test_every_response_carries_a_request_id(service: Service) -> None:
    request_id = service.submit()
    service.wait_status(request_id)
    responses = {
        "health": service.client.get("/health"),
        "ready": service.client.get("/ready"),
        "openapi": service.client.get("/openapi.json"),
        "unknown path": service.client.get("/nope"),
        "wrong method": service.client.get(RUN_PATH),
        "422": service.client.post(RUN_PATH, json={}),
        "status": service.status(request_id),
        "result": service.result(request_id),
        "cancel 400": service.cancel(request_id),
        "unknown id": service.status("nope"),
        "file 404": service.client.get(f"/files/{request_id}/nope.png"),
        "preflight": service.client.options(
            SUBMIT_PATH,
            headers={"origin": "https://a.example", "access-control-request-method": "POST"},
        ),
    }
    for name, response in responses.items():
        assert response.headers.get("x-fal-request-id"), name


def test_unknown_path(service: Service) -> None:
    response = service.client.get("/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Path /nope not found"}
    assert UUID.match(response.headers["x-fal-request-id"])
    assert (
        response.headers["x-fal-request-id"]
        != service.client.get("/nope").headers["x-fal-request-id"]
    )


def test_cors_preflight(service: Service) -> None:
    response = service.client.options(
        SUBMIT_PATH,
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-fal-queue-priority",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example.com")
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "x-fal-queue-priority"} <= allowed


def test_cors_exposes_fal_headers(service: Service) -> None:
    response = service.client.get("/health", headers={"origin": "https://app.example.com"})
    assert response.headers["access-control-allow-origin"] in ("*", "https://app.example.com")
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {"x-fal-request-id", "x-fal-error-type"} <= exposed


def test_low_priority_runs_after_normal(make_service: MakeService) -> None:
    svc = make_service(gated=True, max_batch_images=1, num_steps=2, step_seconds=0.01)
    low = svc.submit(headers={"X-Fal-Queue-Priority": "low"})
    normal = [svc.submit(headers={"X-Fal-Queue-Priority": "normal"}), svc.submit()]
    assert [svc.status(i).json()["queue_position"] for i in (*normal, low)] == [0, 1, 2]
    svc.gate.open()  # type: ignore[union-attr]
    svc.wait_status(low)
    assert svc.gate.engine.calls == [(normal[0],), (normal[1],), (low,)]  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["urgent", "", "high"])
def test_bad_priority(service: Service, value: str) -> None:
    response = service.client.post(
        SUBMIT_PATH, json=edit_body(), headers={"X-Fal-Queue-Priority": value}
    )
    assert response.status_code == 422
    [problem] = _problems(response.json())
    assert problem["loc"] == ["header", "x-fal-queue-priority"]
    assert not service.queue._jobs  # nothing was queued


def test_priority_header_is_case_insensitive(make_service: MakeService) -> None:
    svc = make_service(gated=True)
    low = svc.submit(headers={"x-fal-queue-priority": "LOW"})
    normal = svc.submit()
    assert svc.status(normal).json()["queue_position"] == 0
    assert svc.status(low).json()["queue_position"] == 1


def test_queue_full(make_service: MakeService) -> None:
    svc = make_service(gated=True, max_queued=1)
    first = svc.submit()
    for path in (SUBMIT_PATH, RUN_PATH):
        response = svc.client.post(path, json=edit_body())
        assert response.status_code == 429
        assert response.headers["retry-after"].isdigit()
        assert response.headers["x-fal-error-type"] == "concurrent_requests_limit"
        assert response.headers["x-fal-request-id"]
        body = response.json()
        assert body["error_type"] == "concurrent_requests_limit"
        assert isinstance(body["detail"], str) and body["detail"]
    svc.gate.open()  # type: ignore[union-attr]
    svc.wait_status(first)
    assert svc.client.post(SUBMIT_PATH, json=edit_body()).status_code == 200


def test_start_timeout(make_service: MakeService) -> None:
    """``X-Fal-Request-Timeout``: not started in time → 504 with timeout type ``user``."""
    svc = make_service(gated=True)
    late = svc.submit(headers={"X-Fal-Request-Timeout": "0.05"})
    in_time = svc.submit(headers={"X-Fal-Request-Timeout": "30"})
    time.sleep(0.1)
    svc.gate.open()  # type: ignore[union-attr]
    status = svc.wait_status(late)
    assert status["error_type"] == "request_timeout"
    result = svc.result(late)
    assert result.status_code == 504
    assert result.headers["x-fal-request-timeout-type"] == "user"
    assert result.headers["x-fal-request-id"] == late
    assert result.json()["error_type"] == "request_timeout"
    svc.wait_status(in_time)
    assert svc.result(in_time).status_code == 200


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "-Infinity", "1e400"])
def test_bad_start_timeout(service: Service, value: str) -> None:
    response = service.client.post(
        SUBMIT_PATH, json=edit_body(), headers={"X-Fal-Request-Timeout": value}
    )
    assert response.status_code == 422
    [problem] = _problems(response.json())
    assert problem["loc"] == ["header", "x-fal-request-timeout"]
    assert problem["input"] == value


def test_not_found_body_for_queue_routes(service: Service) -> None:
    response = service.client.get(request_path("missing", "/status"))
    assert response.status_code == 404
    assert response.json()["status"] == "NOT_FOUND"


@pytest.mark.parametrize("request_id", ["%E2%82%AC", "%FF", "a%0Ab", "%20x", "x" * 200])
@pytest.mark.parametrize(("method", "tail"), [("GET", "/status"), ("GET", "/status/stream"),
                                              ("GET", ""), ("PUT", "/cancel")])  # fmt: skip
def test_an_id_that_cannot_be_a_header_is_not_found(
    service: Service, request_id: str, method: str, tail: str
) -> None:
    """The id is echoed in ``x-fal-request-id`` only when it can be a header value as it is
    (a non-Latin-1 id was a 500); otherwise the response gets an id of its own."""
    response = service.client.request(method, request_path(request_id, tail))
    assert response.status_code == 404, response.text
    assert response.json()["status"] == "NOT_FOUND"
    assert response.headers["x-fal-request-id"] != request_id
    assert UUID.match(response.headers["x-fal-request-id"])


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path", [RUN_PATH, SUBMIT_PATH], ids=["run", "submit"])
def test_json_without_json_content_type(
    service: Service, path: str, content_type: str | None
) -> None:
    """``curl -d`` sends form-encoded JSON: both entry points read it as JSON anyway."""
    headers = {"content-type": content_type} if content_type else {}
    response = service.client.post(path, content=json.dumps(edit_body()), headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    request_id = body.get("request_id") or response.headers["x-fal-request-id"]
    service.wait_status(request_id)
    assert service.result(request_id).json()["seed"] == 7


class _BrokenQueue(InMemoryJobQueue):
    """A queue backend that fails (say, its Redis went away)."""

    def view(self, job_id: str) -> JobView | None:
        raise RuntimeError("queue backend unavailable")


def test_unexpected_error_still_carries_request_id(tmp_path: Path) -> None:
    """fal-protocol §7: "always set x-fal-request-id on server-side 5xx" (and CORS headers, or a
    browser cannot read the error)."""
    app = create_app(
        Settings(cache_dir=tmp_path),
        queue=_BrokenQueue(),
        store=LocalArtifactStore(tmp_path / "files"),
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(
            request_path("some-id", "/status"), headers={"origin": "https://app.example.com"}
        )
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error", "error_type": "internal_error"}
    assert response.headers["x-fal-error-type"] == "internal_error"
    assert response.headers.get("x-fal-request-id")
    assert response.headers.get("access-control-allow-origin") in ("*", "https://app.example.com")
