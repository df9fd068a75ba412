"""API keys through the HTTP API: 401 before anything else, and each key sees only its own jobs.

Also the CLI's refusal to expose an unauthenticated server beyond loopback.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from security_helpers import (
    PNG_URI,
    RUN_PATH,
    SUBMIT_PATH,
    Service,
    make_service,
    request_path,
    wait_completed,
)

from pipelines.fake import FakeEngine
from service import cli
from service.inputs import FetchPolicy

K1, K2 = "k1-secret", "k2-secret"
K2_DIGEST = hashlib.sha256(K2.encode()).hexdigest()
BODY = {"prompt": "make it #FF5733", "image_urls": [PNG_URI], "image_size": "square", "seed": 3}


def auth(key: str, scheme: str = "Key") -> dict[str, str]:
    return {"Authorization": f"{scheme} {key}"}


@dataclass
class Keyed:
    service: Service
    request_id: str  # a job K1 submitted, completed
    file_path: str  # one of its output files (/files/<id>/<name>)


def _slow_engine() -> FakeEngine:
    return FakeEngine(num_steps=10, step_seconds=0.05)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    service, _ = make_service(
        tmp_path_factory.mktemp("keyed"),
        fetch_policy=FetchPolicy(),
        engine=_slow_engine,
        api_keys=f"{K1},sha256:{K2_DIGEST}",
    )
    with service.client as client:
        submitted = client.post(SUBMIT_PATH, json=BODY, headers=auth(K1))
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]
        wait_completed(service.queue, request_id)
        result = client.get(request_path(request_id), headers=auth(K1))
        assert result.status_code == 200, result.text
        file_path = httpx.URL(result.json()["images"][0]["url"]).path
        yield Keyed(service, request_id, file_path)


# -- 401 everywhere that is not public ---------------------------------------------------------


def _routes(keyed: Keyed) -> list[tuple[str, str, Any]]:
    rid = keyed.request_id
    return [
        ("POST", RUN_PATH, BODY),
        ("POST", SUBMIT_PATH, BODY),
        ("GET", request_path(rid, "/status"), None),
        ("GET", request_path(rid, "/status", subpath=True), None),
        ("GET", request_path(rid, "/status/stream"), None),
        ("GET", request_path(rid), None),
        ("GET", request_path(rid, subpath=True), None),
        ("PUT", request_path(rid, "/cancel"), None),
        ("GET", keyed.file_path, None),
        ("GET", request_path(str(uuid.uuid4()), "/status"), None),  # unknown id: still 401
        ("GET", "/files/nope/nope.png", None),
    ]


ROUTE_NAMES = [
    "run",
    "submit",
    "status",
    "status-subpath",
    "stream",
    "result",
    "result-subpath",
    "cancel",
    "file",
    "unknown-status",
    "unknown-file",
]
BAD_HEADERS = {
    "no-header": {},
    "wrong-key": auth("k3"),
    "wrong-scheme": {"Authorization": f"Basic {K1}"},
    "no-scheme": {"Authorization": K1},
    "empty-key": {"Authorization": "Key "},
    "stored-digest": auth(f"sha256:{K2_DIGEST}"),
}


def _assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"detail", "error_type"}
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["error_type"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Key"
    assert response.headers["x-fal-error-type"] == "unauthorized"


@pytest.mark.parametrize("headers", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
@pytest.mark.parametrize("route", range(len(ROUTE_NAMES)), ids=ROUTE_NAMES)
def test_without_a_valid_key_is_401(keyed: Keyed, route: int, headers: dict[str, str]) -> None:
    method, path, body = _routes(keyed)[route]
    response = keyed.service.client.request(method, path, json=body, headers=headers)
    _assert_401(response)


BAD_BODIES = {
    "invalid-schema": ({"prompt": 5, "image_urls": "x"}, None),
    "json-array": ([1, 2], None),
    "empty": (None, b""),
    "non-json": (None, b"{not json"),
}


@pytest.mark.parametrize("path", [RUN_PATH, SUBMIT_PATH], ids=["run", "submit"])
@pytest.mark.parametrize("bad", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_key_is_checked_before_the_body(keyed: Keyed, path: str, bad: tuple[Any, Any]) -> None:
    json_body, raw = bad
    client = keyed.service.client
    if raw is None:
        response = client.post(path, json=json_body)
    else:
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
    _assert_401(response)


def test_a_bad_body_with_a_key_is_422(keyed: Keyed) -> None:
    response = keyed.service.client.post(RUN_PATH, json={"prompt": 5}, headers=auth(K1))
    assert response.status_code == 422


@pytest.mark.parametrize("path", ["/health", "/ready", "/openapi.json", "/docs"])
def test_public_endpoints_stay_open(keyed: Keyed, path: str) -> None:
    client = keyed.service.client
    deadline = time.monotonic() + 10
    response = client.get(path)
    while path == "/ready" and response.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.02)
        response = client.get(path)
    assert response.status_code == 200, response.text
    assert client.get(path, headers=auth("wrong")).status_code == 200


# -- each key sees its own jobs ----------------------------------------------------------------


@pytest.mark.parametrize("headers", [auth(K1), auth(K1, "Bearer")], ids=["key", "bearer"])
def test_owner_sees_everything(keyed: Keyed, headers: dict[str, str]) -> None:
    client, rid = keyed.service.client, keyed.request_id
    status = client.get(request_path(rid, "/status"), headers=headers)
    assert status.status_code == 200
    assert status.json()["status"] == "COMPLETED"
    assert (
        client.get(request_path(rid, "/status", subpath=True), headers=headers).status_code == 200
    )
    result = client.get(request_path(rid), headers=headers)
    assert result.status_code == 200
    assert result.json()["images"][0]["url"].endswith(keyed.file_path)
    stream = client.get(request_path(rid, "/status/stream"), headers=headers)
    assert stream.status_code == 200
    assert '"status": "COMPLETED"' in stream.text
    image = client.get(keyed.file_path, headers=headers)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    cancel = client.put(request_path(rid, "/cancel"), headers=headers)
    assert cancel.status_code == 400  # already completed, but visible


def _other_key_paths(keyed: Keyed) -> list[tuple[str, str]]:
    rid = keyed.request_id
    return [
        ("GET", request_path(rid, "/status")),
        ("GET", request_path(rid, "/status", subpath=True)),
        ("GET", request_path(rid)),
        ("GET", request_path(rid, subpath=True)),
        ("GET", request_path(rid, "/status/stream")),
        ("PUT", request_path(rid, "/cancel")),
        ("GET", keyed.file_path),
    ]


@pytest.mark.parametrize("index", range(7))
def test_another_key_gets_404(keyed: Keyed, index: int) -> None:
    method, path = _other_key_paths(keyed)[index]
    client = keyed.service.client
    response = client.request(method, path, headers=auth(K2))
    assert response.status_code == 404, response.text
    # exactly what a request id that never existed gets: no oracle
    unknown = str(uuid.uuid4())
    same = client.request(method, path.replace(keyed.request_id, unknown), headers=auth(K2))
    assert same.status_code == 404
    assert response.json() == _with_id(same.json(), unknown, keyed.request_id)


def _with_id(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _with_id(v, old, new) for k, v in value.items()}
    return value


def test_another_key_cannot_cancel_a_running_job(keyed: Keyed) -> None:
    client, queue = keyed.service.client, keyed.service.queue
    submitted = client.post(SUBMIT_PATH, json=BODY, headers=auth(K1))
    rid = submitted.json()["request_id"]
    assert client.put(request_path(rid, "/cancel"), headers=auth(K2)).status_code == 404
    view = wait_completed(queue, rid)
    assert view.outcome is not None
    assert view.outcome.ok
    assert client.get(request_path(rid), headers=auth(K1)).status_code == 200


def test_keys_are_isolated_both_ways(keyed: Keyed) -> None:
    client, queue = keyed.service.client, keyed.service.queue
    run = client.post(RUN_PATH, json=BODY, headers=auth(K2))  # sync run by the hashed key
    assert run.status_code == 200, run.text
    rid = run.headers["x-fal-request-id"]
    wait_completed(queue, rid)
    file_path = httpx.URL(run.json()["images"][0]["url"]).path
    assert client.get(request_path(rid), headers=auth(K2)).status_code == 200
    assert client.get(file_path, headers=auth(K2)).status_code == 200
    assert client.get(request_path(rid), headers=auth(K1)).status_code == 404
    assert client.get(file_path, headers=auth(K1)).status_code == 404


# -- without keys: anonymous -------------------------------------------------------------------


def test_without_keys_everything_is_anonymous(tmp_path: Path) -> None:
    service, _ = make_service(tmp_path, fetch_policy=FetchPolicy())
    with service.client as client:
        run = client.post(RUN_PATH, json=BODY)
        assert run.status_code == 200, run.text
        submitted = client.post(SUBMIT_PATH, json=BODY, headers=auth("anything"))
        assert submitted.status_code == 200
        rid = submitted.json()["request_id"]
        wait_completed(service.queue, rid)
        for path in (request_path(rid, "/status"), request_path(rid, "/status/stream")):
            assert client.get(path).status_code == 200
        result = client.get(request_path(rid))
        assert result.status_code == 200
        assert client.get(httpx.URL(result.json()["images"][0]["url"]).path).status_code == 200
        assert client.get(request_path(rid), headers=auth("whatever")).status_code == 200
        assert client.put(request_path(rid, "/cancel")).status_code == 400


# -- the CLI's exposure check ------------------------------------------------------------------


@dataclass
class Calls:
    uvicorn: list[dict[str, Any]]
    workers: list[Any]
    engines: list[Any]


@pytest.fixture
def serve_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Calls]:
    """``serve`` with uvicorn, the worker and the engine replaced by recorders; a clean env."""
    import uvicorn

    import service.bootstrap
    import service.engines

    for name in list(os.environ):
        if name.startswith("FLUX2_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLUX2_CACHE_DIR", str(tmp_path / "cache"))
    calls = Calls(uvicorn=[], workers=[], engines=[])

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.uvicorn.append(kwargs)

    def fake_build(*args: Any, **kwargs: Any) -> None:
        calls.workers.append(args)

    def fake_build_app(components: Any) -> object:
        return object()

    def fake_engine(*args: Any, **kwargs: Any) -> None:
        calls.engines.append(args)
        raise AssertionError("no engine may be created")

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(service.bootstrap, "build", fake_build)
    monkeypatch.setattr(service.bootstrap, "build_app", fake_build_app)
    monkeypatch.setattr(service.engines, "create_engine", fake_engine)
    root = logging.getLogger()
    level = root.level
    try:
        yield calls
    finally:
        root.setLevel(level)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_cli_refuses_a_public_bind_without_keys(
    serve_calls: Calls, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    code = cli.main(["serve", "--model", "tiny", "--host", host])
    assert code == 1
    message = capsys.readouterr().err
    assert f"refusing to serve on {host} without API keys" in message
    assert "FLUX2_ALLOW_UNAUTHENTICATED" in message
    assert serve_calls.uvicorn == []
    assert serve_calls.workers == []
    assert serve_calls.engines == []


def test_cli_api_node_refuses_a_public_bind_without_keys(
    serve_calls: Calls, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before it even connects to Redis (nothing listens on port 1).
    code = cli.main(["api", "--redis-url", "redis://127.0.0.1:1/0", "--host", "0.0.0.0"])
    assert code == 1
    assert "refusing to serve on 0.0.0.0" in capsys.readouterr().err
    assert serve_calls.uvicorn == []


@pytest.mark.parametrize(
    "env",
    [
        {"FLUX2_ALLOW_UNAUTHENTICATED": "true"},
        {"FLUX2_API_KEYS": "k1"},
        {"FLUX2_API_KEYS": f"sha256:{K2_DIGEST}"},
    ],
    ids=["allow-unauthenticated", "plain-key", "hashed-key"],
)
def test_cli_serves_publicly_when_allowed_or_keyed(
    serve_calls: Calls, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", "--model", "tiny", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert len(serve_calls.workers) == 1
    assert len(serve_calls.uvicorn) == 1
    assert serve_calls.uvicorn[0]["host"] == "0.0.0.0"
    assert serve_calls.uvicorn[0]["port"] == 8123
    assert serve_calls.engines == []  # the worker (faked) would load it, in its own thread


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.5"])
def test_cli_serves_on_loopback_without_keys(serve_calls: Calls, host: str) -> None:
    assert cli.main(["serve", "--model", "tiny", "--host", host]) == 0
    assert len(serve_calls.uvicorn) == 1
    assert len(serve_calls.workers) == 1
