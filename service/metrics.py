"""Prometheus metrics: one :class:`Metrics` (and its own registry) per app or worker process.

Counters and histograms are updated where things happen (the HTTP middleware in
:mod:`service.middleware`, the worker);
values that already live elsewhere (queue depth, the worker's state, the prompt cache's counters,
GPU memory) are read at scrape time by :class:`_LiveCollector`. Nothing here imports torch: GPU
memory is reported only when torch is already imported and CUDA is initialised.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from pipelines.prompt_cache import CacheStats
from service.jobs import Job, Outcome
from service.queue.base import JobQueue
from service.status import WorkerState

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "WorkerProbe"]

logger = logging.getLogger(__name__)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120, 300)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16)


class WorkerProbe(Protocol):
    """What the metrics read from a worker at scrape time."""

    @property
    def state(self) -> StrEnum: ...

    def prompt_cache_stats(self) -> CacheStats | None: ...


class Metrics:
    """The collectors of one process. ``bind()`` names the queue and worker read at scrape time.

    Each instance has its own :class:`CollectorRegistry` (tests build many apps in one process;
    the global default registry would refuse the second set of names).
    """

    def __init__(self, *, process_collectors: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process_collectors:  # process_*, python_info, python_gc_*: as the default registry
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.http_requests = Counter(
            "flux2_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "flux2_http_request_seconds",
            "Time to answer an HTTP request (a sync run includes the edit).",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "flux2_queue_wait_seconds",
            "Time from submission until a worker claimed the job.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.run_seconds = Histogram(
            "flux2_run_seconds",
            "Time from claim until the job completed (inputs, model, safety, encoding).",
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.jobs = Counter(
            "flux2_jobs",
            "Jobs completed by a worker, by endpoint and outcome: ok, or the fal error type.",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "flux2_batch_size",
            "Size of each engine call, in requests and in output images.",
            ["unit"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.denoise_steps = Counter(
            "flux2_denoise_steps", "Denoising steps run (one per step of a batch).", registry=r
        )
        self.step_seconds = Histogram(
            "flux2_step_seconds",
            "Time between consecutive denoising steps of a batch (the first step is not timed: "
            "it includes text and reference encoding).",
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.steps_per_second = Gauge(
            "flux2_denoise_steps_per_second",
            "Denoising steps per second of the last engine call (steps 2..N).",
            registry=r,
        )
        self.safety_flagged = Counter(
            "flux2_safety_flagged",
            "Images flagged by the safety checker, by stage (input references, output images).",
            ["stage"],
            registry=r,
        )
        self._live = _LiveCollector()
        r.register(self._live)

    def bind(self, *, queue: JobQueue | None = None, worker: WorkerProbe | None = None) -> None:
        """Read the queue depth from ``queue``, and the state, prompt cache and GPU memory of
        ``worker``, at every scrape."""
        if queue is not None:
            self._live.queue = queue
        if worker is not None:
            self._live.worker = worker

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    # -- recorders ------------------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route, method).observe(seconds)

    def observe_job(self, job: Job, outcome: Outcome, now: float | None = None) -> None:
        """A worker completed ``job``: its outcome, queue wait and run time (wall clock)."""
        now = time.time() if now is None else now
        label = "ok" if outcome.ok else (outcome.error_type or "error")
        self.jobs.labels(job.endpoint, label).inc()
        if job.started_at is not None:
            self.queue_wait.observe(max(0.0, job.started_at - job.created_at))
            self.run_seconds.observe(max(0.0, now - job.started_at))

    def observe_batch(self, requests: int, images: int) -> None:
        self.batch_size.labels("requests").observe(requests)
        self.batch_size.labels("images").observe(images)

    def step_timer(self) -> StepTimer:
        """A fresh timer for the steps of one engine call."""
        return StepTimer(self)

    def flagged(self, stage: str, images: int) -> None:
        if images:
            self.safety_flagged.labels(stage).inc(images)


class StepTimer:
    """Counts the steps of one engine call and times the gaps between them."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.first: float | None = None
        self.last: float | None = None
        self.steps = 0

    def step(self) -> None:
        now = time.perf_counter()
        self.metrics.denoise_steps.inc()
        if self.last is not None:
            self.metrics.step_seconds.observe(now - self.last)
        else:
            self.first = now
        self.last = now
        self.steps += 1

    def done(self) -> None:
        if self.first is not None and self.last is not None and self.last > self.first:
            self.metrics.steps_per_second.set((self.steps - 1) / (self.last - self.first))


class _LiveCollector:
    """Values read at scrape time from the bound queue and worker."""

    def __init__(self) -> None:
        self.queue: JobQueue | None = None
        self.worker: WorkerProbe | None = None

    def describe(self) -> list[Metric]:
        return []  # unchecked names: what collect() yields depends on what is bound

    def collect(self) -> Iterator[Metric]:
        yield from self._queue_depth()
        worker = self.worker
        if worker is None:
            return
        state = GaugeMetricFamily(
            "flux2_worker_state", "1 for the worker's current state.", labels=["state"]
        )
        for member in type(worker.state):
            state.add_metric([member.value], 1.0 if member is worker.state else 0.0)
        yield state
        yield from _prompt_cache(worker.prompt_cache_stats())
        yield from _lora_caches(worker)
        yield from _gpu_memory()

    def _queue_depth(self) -> Iterable[Metric]:
        """Depth, the oldest waiting job's age and the live workers (read from the queue: on
        Redis, every node sees the same). Left out when the queue cannot be read."""
        if self.queue is None:
            return []
        try:
            depth = int(self.queue.depth())
            oldest = self.queue.oldest_queued_age()
            workers = self.queue.live_workers()
        except Exception as exc:  # a scrape must not fail because Redis is away
            logger.warning("queue metrics unavailable: %s", exc)
            return []
        live = GaugeMetricFamily(
            "flux2_live_workers",
            "Workers that announced themselves within their lease, by state (all nodes).",
            labels=["state"],
        )
        for state in WorkerState:
            live.add_metric([state.value], float(sum(w.state == state.value for w in workers)))
        return [
            GaugeMetricFamily("flux2_queue_depth", "Jobs waiting in the queue.", value=depth),
            GaugeMetricFamily(
                "flux2_oldest_queued_seconds",
                "How long the oldest waiting job has waited (0 when none waits).",
                value=oldest or 0.0,
            ),
            live,
        ]


def _prompt_cache(stats: CacheStats | None) -> Iterable[Metric]:
    if stats is None:
        return []
    return [
        CounterMetricFamily(
            "flux2_prompt_cache_hits", "Prompt embeddings reused.", value=stats.hits
        ),
        CounterMetricFamily(
            "flux2_prompt_cache_misses", "Prompts run through the text encoder.", value=stats.misses
        ),
        GaugeMetricFamily("flux2_prompt_cache_entries", "Cached prompts.", value=stats.entries),
        GaugeMetricFamily(
            "flux2_prompt_cache_bytes", "Bytes of cached tensors.", value=stats.bytes
        ),
    ]


def _lora_caches(worker: WorkerProbe) -> Iterable[Metric]:
    """The downloaded-LoRA file cache (the worker's) and the loaded-adapter cache (the
    engine's), for workers that have them."""
    metrics: list[Metric] = []
    for method, prefix, what in (
        ("lora_file_stats", "flux2_lora_file_cache", ("LoRA URLs found in the file cache.",
         "LoRA URLs downloaded.", "Bytes of cached LoRA files.", "Cached LoRA files.")),
        ("adapter_cache_stats", "flux2_lora_adapter_cache", ("LoRA adapters reused.",
         "LoRA adapters loaded.", "Bytes of loaded adapters.", "Loaded adapters.")),
    ):  # fmt: skip
        probe = getattr(worker, method, None)
        stats = probe() if callable(probe) else None
        if stats is None:
            continue
        hits, misses, size, entries = what
        metrics += [
            CounterMetricFamily(f"{prefix}_hits", hits, value=stats.hits),
            CounterMetricFamily(f"{prefix}_misses", misses, value=stats.misses),
            GaugeMetricFamily(f"{prefix}_bytes", size, value=stats.bytes),
            GaugeMetricFamily(f"{prefix}_entries", entries, value=stats.entries),
        ]
    return metrics


def _gpu_memory() -> Iterable[Metric]:
    torch: Any = sys.modules.get("torch")  # never import it here: the API node has none
    if torch is None:
        return []
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return []
        family = GaugeMetricFamily(
            "flux2_gpu_memory_bytes",
            "GPU memory held by this process's tensors (allocated) and by its caching allocator "
            "(reserved).",
            labels=["device", "kind"],
        )
        for index in range(torch.cuda.device_count()):
            family.add_metric([str(index), "allocated"], float(torch.cuda.memory_allocated(index)))
            family.add_metric([str(index), "reserved"], float(torch.cuda.memory_reserved(index)))
    except Exception as exc:  # a broken driver must not break the scrape
        logger.warning("GPU memory unavailable: %s", exc)
        return []
    return [family]
