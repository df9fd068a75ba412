"""Output files (``/files/<job>/<name>``), result expiry, liveness and readiness."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from service_helpers import (
    RUN_PATH,
    MakeService,
    Service,
    edit_body,
    request_path,
    wait_for,
)
from starlette.testclient import TestClient

from core.errors import QueueUnavailable, WeightsError
from pipelines.fake import FakeEngine
from service.app import create_app
from service.jobs import WorkerInfo
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.storage.local import LocalArtifactStore

SECRET = b"TOPSECRET-do-not-serve"


def _finished_job(service: Service, **overrides: object) -> tuple[str, dict[str, object]]:
    request_id = service.submit(edit_body(**overrides))
    service.wait_status(request_id)
    image: dict[str, object] = service.result(request_id).json()["images"][0]
    return request_id, image


# -- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_file_download(service: Service, fmt: str) -> None:
    request_id, image = _finished_job(service, output_format=fmt)
    url = str(image["url"])
    path = url.removeprefix("http://testserver")
    assert path.startswith(f"/files/{request_id}/")
    response = service.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"image/{fmt}"
    assert len(response.content) == image["file_size"]
    on_disk = service.files / request_id / str(image["file_name"])
    assert on_disk.read_bytes() == response.content


def test_unknown_files_are_404(service: Service) -> None:
    request_id, image = _finished_job(service)
    other_id, _ = _finished_job(service)
    for path in (
        f"/files/{request_id}/nope.png",
        f"/files/{request_id}/{str(image['file_name'])[:-4]}.jpg",
        f"/files/00000000-0000-4000-8000-000000000000/{image['file_name']}",
        f"/files/{other_id}/{image['file_name']}",  # another job's folder
    ):
        response = service.client.get(path)
        assert response.status_code == 404, path
        assert isinstance(response.json()["detail"], str)


def test_path_traversal_is_404(service: Service) -> None:
    request_id, image = _finished_job(service)
    (service.files.parent / "secret.txt").write_bytes(SECRET)  # beside the store
    (service.files / "secret.txt").write_bytes(SECRET)  # in the store, in no job's folder
    (service.files / request_id / ".secret").write_bytes(SECRET)  # hidden, in the job's folder
    attempts = [
        "/files/..%2F..%2Fetc/passwd",
        "/files/x/..",
        "/files/%2e%2e/secret.txt",
        f"/files/{request_id}/..%2Fsecret.txt",
        f"/files/{request_id}/..%2F..%2Fsecret.txt",
        f"/files/{request_id}/%2e%2e",
        f"/files/{request_id}/.secret",
        f"/files/{request_id}/%2E%2E%2F%2E%2E%2Fsecret.txt",
        f"/files/{request_id}%2F..%2F..%2Fsecret.txt/x",
        "/files/%2e%2e%2f%2e%2e%2fetc/passwd",
        "/files/..%5C..%5Csecret.txt/x",
        f"/files/{request_id}/{image['file_name']}%00.txt",
    ]
    for path in attempts:
        response = service.client.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert SECRET not in response.content
        assert b"root:" not in response.content


def test_expired_results_and_files_are_gone(make_service: MakeService) -> None:
    svc = make_service(result_ttl=0.2)
    request_id, image = _finished_job(svc)
    path = str(image["url"]).removeprefix("http://testserver")
    assert svc.client.get(path).status_code == 200
    folder = svc.files / request_id
    assert folder.is_dir()
    wait_for(lambda: svc.status(request_id).status_code == 404, timeout=3, what="expiry")
    svc.worker.expire()
    assert not folder.exists()
    status = svc.status(request_id)
    assert status.status_code == 404
    assert status.json()["status"] == "NOT_FOUND"
    assert svc.result(request_id).status_code == 404
    assert svc.cancel(request_id).status_code == 404
    assert svc.client.get(request_path(request_id, "/status/stream")).status_code == 404
    assert svc.client.get(path).status_code == 404


# -- health --------------------------------------------------------------------------------------


def test_health(service: Service) -> None:
    response = service.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_after_the_engine_loads(make_service: MakeService) -> None:
    svc = make_service(gated=True)
    response = svc.client.get("/ready")
    assert response.status_code == 503
    assert response.json()["worker"] == "starting"
    assert response.json()["status"] == "not_ready"
    assert svc.client.get("/health").status_code == 200  # alive while loading
    svc.gate.open()  # type: ignore[union-attr]
    wait_for(lambda: svc.client.get("/ready").status_code == 200, what="ready")
    assert svc.client.get("/ready").json() == {"status": "ready", "worker": "ready"}


def test_ready_while_busy(make_service: MakeService) -> None:
    svc = make_service(num_steps=20, step_seconds=0.05)
    request_id = svc.submit()
    wait_for(lambda: svc.worker.state.value == "busy", what="busy")
    response = svc.client.get("/ready")
    assert response.status_code == 200
    assert response.json()["worker"] == "busy"
    svc.cancel(request_id)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (WeightsError("weights missing: /models/flux2 has no transformer"), None),
        (RuntimeError("CUDA driver too old"), "RuntimeError: CUDA driver too old"),
    ],
    ids=["weights-error", "unexpected"],
)
def test_engine_that_cannot_load(
    make_service: MakeService, error: Exception, message: str | None
) -> None:
    def factory() -> FakeEngine:
        raise error

    svc = make_service(engine_factory=factory)
    expected = message or str(error)

    def failed() -> dict[str, object] | None:
        response = svc.client.get("/ready")
        body: dict[str, object] = response.json()
        return body if body["worker"] == "setup_failed" else None

    body = wait_for(failed, what="setup_failed")
    assert svc.client.get("/ready").status_code == 503
    assert body == {"status": "not_ready", "worker": "setup_failed", "error": expected}
    request_id = svc.submit()
    status = svc.wait_status(request_id, timeout=5)
    assert status["error_type"] == "runner_connection_error"
    assert expected in str(status["error"])
    result = svc.result(request_id)
    assert result.status_code == 503
    assert result.headers["x-fal-request-id"] == request_id
    assert expected in result.json()["detail"]
    sync = svc.client.post(RUN_PATH, json=edit_body())
    assert sync.status_code == 503
    assert sync.json()["error_type"] == "runner_connection_error"


def test_an_api_node_is_ready_only_with_a_live_ready_worker(tmp_path: Path) -> None:
    queue = InMemoryJobQueue()
    app = create_app(Settings(cache_dir=tmp_path), queue=queue, store=LocalArtifactStore(tmp_path))
    with TestClient(app) as client:
        alone = client.get("/ready")
        assert alone.status_code == 503
        assert alone.json() == {"status": "not_ready", "reason": "no live worker", "worker": None,
                                "workers": []}  # fmt: skip
        queue.announce(WorkerInfo("gpu-1", "starting", model="tiny"), ttl=30)
        loading = client.get("/ready")
        assert loading.status_code == 503
        assert loading.json()["reason"] == "no worker is ready yet"
        assert [w["state"] for w in loading.json()["workers"]] == ["starting"]
        queue.announce(WorkerInfo("gpu-2", "ready", model="tiny"), ttl=30)
        ready = client.get("/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert (body["status"], body["worker"]) == ("ready", None)
        assert [(w["name"], w["state"], w["model"]) for w in body["workers"]] == [
            ("gpu-1", "starting", "tiny"),
            ("gpu-2", "ready", "tiny"),
        ]
        queue.announce(WorkerInfo("gpu-2", "ready", seen_at=time.time() - 60), ttl=30)
        queue.withdraw("gpu-1")
        assert client.get("/ready").status_code == 503  # its announcement lapsed


class _UnreachableQueue(InMemoryJobQueue):
    def live_workers(self) -> list[WorkerInfo]:
        raise QueueUnavailable("redis unreachable: connection refused")


def test_readiness_says_when_the_queue_is_unreachable(tmp_path: Path) -> None:
    app = create_app(
        Settings(cache_dir=tmp_path), queue=_UnreachableQueue(), store=LocalArtifactStore(tmp_path)
    )
    with TestClient(app) as client:
        response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["reason"].startswith("the queue is unreachable: redis unreachable")
