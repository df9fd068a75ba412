"""``GET /metrics``: counters move when jobs run; the HTTP layer still never imports torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import (
    RUN_PATH,
    SUBMIT_PATH,
    MakeService,
    Service,
    data_uri,
    edit_body,
    png_bytes,
    request_path,
    wait_for,
)

from pipelines.fake import FakeEngine
from pipelines.prompt_cache import CacheStats
from pipelines.safety import AlwaysFlagChecker
from service.jobs import JobStatus
from service.metrics import CONTENT_TYPE_LATEST, Metrics
from service.middleware import OTHER_ROUTE
from service.queue.memory import InMemoryJobQueue
from service.schema import ENDPOINT_ID
from service.storage.local import LocalArtifactStore
from service.worker import Worker, WorkerOptions, WorkerState
from tests.helpers.jobs import make_job

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

STATUS_ROUTE = "/queue/fal-ai/flux-2/requests/{request_id}/status"


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(service: Service) -> Samples:
    response = service.client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_move_after_jobs(service: Service) -> None:
    before = scrape(service)

    ran = service.client.post(RUN_PATH, json=edit_body())
    assert ran.status_code == 200, ran.text
    queued = service.submit()
    service.wait_status(queued)
    assert service.result(queued).status_code == 200
    invalid = service.client.post(RUN_PATH, json={"prompt": 5})
    assert invalid.status_code == 422
    too_small = service.submit(edit_body(image_urls=[data_uri(png_bytes(16, 16))]))
    failed = service.wait_status(too_small)
    assert failed["error_type"]
    assert service.client.get("/no/such/path").status_code == 404

    def scrape_when_ready() -> Samples | None:
        samples = scrape(service)
        return samples if value(samples, "flux2_worker_state", state="ready") == 1.0 else None

    after = wait_for(scrape_when_ready, what="worker back to ready")
    requests = "flux2_http_requests_total"
    assert moved(before, after, requests, route=RUN_PATH, method="POST", status="200") == 1
    assert moved(before, after, requests, route=RUN_PATH, method="POST", status="422") == 1
    assert moved(before, after, requests, route=SUBMIT_PATH, method="POST", status="200") == 2
    assert moved(before, after, requests, route=OTHER_ROUTE, method="GET", status="404") == 1
    assert moved(before, after, requests, route="/metrics", method="GET", status="200") == 1
    duration = "flux2_http_request_seconds_count"
    assert moved(before, after, duration, route=RUN_PATH, method="POST") == 2

    assert moved(before, after, "flux2_jobs_total", endpoint=ENDPOINT_ID, outcome="ok") == 2
    assert (
        moved(before, after, "flux2_jobs_total", endpoint=ENDPOINT_ID, outcome=failed["error_type"])
        == 1
    )
    assert moved(before, after, "flux2_queue_wait_seconds_count") == 3
    assert moved(before, after, "flux2_run_seconds_count") == 3
    assert moved(before, after, "flux2_batch_size_count", unit="requests") == 2
    assert moved(before, after, "flux2_batch_size_sum", unit="images") == 2
    assert moved(before, after, "flux2_denoise_steps_total") == 2 * 4  # the fake runs 4 steps
    assert moved(before, after, "flux2_step_seconds_count") == 2 * 3  # steps 2..4 are timed
    assert value(after, "flux2_worker_state", state="busy") == 0.0


def test_content_type_and_process_metrics(service: Service) -> None:
    response = service.client.get("/metrics")
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "# TYPE flux2_http_requests_total counter" in response.text
    assert "python_info" in response.text


def test_routes_are_labelled_by_template_not_by_path(service: Service) -> None:
    request_id = service.submit()
    service.wait_status(request_id)
    response = service.client.get(request_path(request_id, "/status"))
    assert response.status_code == 200
    text = service.client.get("/metrics").text
    assert request_id not in text  # one series per route, not per request
    samples = parse(text)
    assert value(
        samples, "flux2_http_requests_total", route=STATUS_ROUTE, method="GET", status="200"
    )


def test_worker_state_while_loading(make_service: MakeService) -> None:
    service = make_service(gated=True)
    samples = scrape(service)
    assert value(samples, "flux2_worker_state", state="starting") == 1.0
    assert value(samples, "flux2_worker_state", state="ready") == 0.0
    assert ("flux2_denoise_steps_total", frozenset()) in samples  # present from the start
    assert service.gate is not None
    service.gate.open()
    wait_for(
        lambda: value(scrape(service), "flux2_worker_state", state="ready") == 1.0, what="ready"
    )


class _CountingQueue(InMemoryJobQueue):
    """What a queue with the proposed ``depth()`` looks like to the metrics."""

    def depth(self) -> int:
        with self._lock:
            return len(self._pending)


class _BrokenDepthQueue(InMemoryJobQueue):
    def depth(self) -> int:
        raise ConnectionError("redis is away")


def test_queue_depth_is_read_at_scrape_time() -> None:
    queue = _CountingQueue()
    metrics = Metrics(process_collectors=False)
    metrics.bind(queue=queue)
    assert value(parse(metrics.render().decode()), "flux2_queue_depth") == 0.0
    for n in range(3):
        queue.submit(make_job(f"job-{n}"))
    assert value(parse(metrics.render().decode()), "flux2_queue_depth") == 3.0


def test_queue_depth_is_left_out_when_reading_it_fails() -> None:
    metrics = Metrics(process_collectors=False)
    metrics.bind(queue=_BrokenDepthQueue())
    assert "flux2_queue_depth" not in metrics.render().decode()
    working = Metrics(process_collectors=False)
    working.bind(queue=InMemoryJobQueue())  # depth() is part of the JobQueue protocol now
    assert "flux2_queue_depth 0.0" in working.render().decode()


def test_prompt_cache_counters_come_from_the_engine() -> None:
    stats = CacheStats(hits=5, misses=2, entries=2, bytes=4096, max_bytes=1 << 20)
    worker: Any = SimpleNamespace(state=WorkerState.BUSY, prompt_cache_stats=lambda: stats)
    metrics = Metrics(process_collectors=False)
    metrics.bind(worker=worker)
    samples = parse(metrics.render().decode())
    assert value(samples, "flux2_prompt_cache_hits_total") == 5
    assert value(samples, "flux2_prompt_cache_misses_total") == 2
    assert value(samples, "flux2_prompt_cache_bytes") == 4096
    assert value(samples, "flux2_worker_state", state="busy") == 1.0
    assert value(samples, "flux2_worker_state", state="ready") == 0.0


@pytest.mark.parametrize(("check_inputs", "stage"), [(True, "input"), (False, "output")])
def test_safety_flags_are_counted(tmp_path: Path, check_inputs: bool, stage: str) -> None:
    queue = InMemoryJobQueue()
    metrics = Metrics(process_collectors=False)
    worker = Worker(
        lambda: FakeEngine(num_steps=2),
        queue,
        LocalArtifactStore(tmp_path),
        options=WorkerOptions(warmup=False, claim_timeout=0.05, check_inputs=check_inputs),
        safety_factory=AlwaysFlagChecker,
        metrics=metrics,
    )
    job = make_job("flagged", input={"num_images": 2})
    queue.submit(job)
    worker.start()
    try:

        def done() -> bool:
            view = queue.view(job.id)
            return view is not None and view.status is JobStatus.COMPLETED

        wait_for(done, what="job completed")
    finally:
        worker.stop()
    samples = parse(metrics.render().decode())
    flagged = 1 if stage == "input" else 2  # one reference in, two images out
    assert value(samples, "flux2_safety_flagged_total", stage=stage) == flagged
    assert value(samples, "flux2_jobs_total", endpoint=ENDPOINT_ID, outcome="ok") == 1


@pytest.mark.slow
def test_the_http_layer_never_imports_torch(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from starlette.testclient import TestClient
        from service.app import create_app
        from service.queue.memory import InMemoryJobQueue
        from service.settings import Settings
        from service.storage.local import LocalArtifactStore

        settings = Settings(cache_dir={str(tmp_path)!r})
        store = LocalArtifactStore(settings.storage.files_root)
        app = create_app(settings, queue=InMemoryJobQueue(), store=store)
        with TestClient(app) as client:
            response = client.get("/metrics")
        assert response.status_code == 200, response.text
        assert "flux2_http_requests_total" in response.text
        assert "flux2_worker_state" not in response.text  # an API node has no worker
        assert "torch" not in sys.modules, "the HTTP layer imported torch"
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def _fake_torch(*, available: bool, initialized: bool) -> Any:
    cuda = SimpleNamespace(
        is_available=lambda: available,
        is_initialized=lambda: initialized,
        device_count=lambda: 2,
        memory_allocated=lambda index: 1000 * (index + 1),
        memory_reserved=lambda index: 4000 * (index + 1),
    )
    return SimpleNamespace(cuda=cuda)


def test_gpu_memory_only_where_torch_already_runs_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    worker: Any = SimpleNamespace(state=WorkerState.READY, prompt_cache_stats=lambda: None)
    metrics = Metrics(process_collectors=False)
    metrics.bind(worker=worker)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert "flux2_gpu_memory_bytes" not in metrics.render().decode()
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(available=True, initialized=False))
    assert "flux2_gpu_memory_bytes" not in metrics.render().decode()  # never initialise CUDA
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(available=True, initialized=True))
    samples = parse(metrics.render().decode())
    gpu = "flux2_gpu_memory_bytes"
    assert value(samples, gpu, device="0", kind="allocated") == 1000
    assert value(samples, gpu, device="1", kind="reserved") == 8000


def test_lora_cache_counters_come_from_the_worker_and_the_engine() -> None:
    files = CacheStats(hits=3, misses=1, entries=1, bytes=2048, max_bytes=1 << 20)
    adapters = CacheStats(hits=7, misses=2, entries=2, bytes=512, max_bytes=1 << 20)
    worker: Any = SimpleNamespace(
        state=WorkerState.READY,
        prompt_cache_stats=lambda: None,
        lora_file_stats=lambda: files,
        adapter_cache_stats=lambda: adapters,
    )
    metrics = Metrics(process_collectors=False)
    metrics.bind(worker=worker)
    samples = parse(metrics.render().decode())
    assert value(samples, "flux2_lora_file_cache_hits_total") == 3
    assert value(samples, "flux2_lora_file_cache_misses_total") == 1
    assert value(samples, "flux2_lora_file_cache_bytes") == 2048
    assert value(samples, "flux2_lora_adapter_cache_hits_total") == 7
    assert value(samples, "flux2_lora_adapter_cache_entries") == 2
