"""The worker: claims jobs, batches the compatible ones, runs the engine, finishes the jobs.

It knows jobs and batches, not models: the engine comes from a factory called on the GPU thread
(loading can take minutes), behind the :class:`pipelines.protocol.EditEngine` seam. The work is
split by stage, each a module with one job and typed values between them::

    queue ─▶ Scheduler ─▶ Preparer ─▶ (Handoff) ─▶ GpuLoop ─▶ Finisher ─▶ queue, store, webhooks
             claim, gather,  fetch, decode,          engine, OOM split,   safety, encode, store,
             stragglers      resize, cache           cancellation         complete, metrics

``Worker`` only builds the stages from :class:`WorkerOptions` and runs them: the scheduler and
the GPU loop on their own threads, preparation and finishing on pools. ``stop()`` drains: no new
claims, the running batch finishes, prepared jobs that did not start are given back for another
worker.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.prompt_cache import CacheStats
from pipelines.protocol import EditEngine
from pipelines.safety import SafetyChecker
from service.inputs import FetchPolicy
from service.jobs import Job, WorkerInfo
from service.lora_cache import FileCacheStats
from service.loras import LoraPolicy, LoraResolver
from service.metrics import Metrics
from service.queue.base import JobQueue
from service.status import WorkerState
from service.storage.base import ArtifactStore
from service.uploads import Uploads
from service.webhooks import WebhookSender
from service.worker.finishing import Finisher
from service.worker.gpu import GpuLoop
from service.worker.housekeeping import Housekeeping
from service.worker.outages import OutageTolerantQueue, OutageTolerantStore, Retrier
from service.worker.policy import BatchPolicy
from service.worker.preparation import Preparer
from service.worker.previews import PreviewWriter
from service.worker.scheduler import Scheduler
from service.worker.screening import SafetyGate
from service.worker.state import Handoff, HeldJobs, MetricsLink, Prepared, Signals


@dataclass(frozen=True)
class WorkerOptions:
    """Args:
    max_batch_images: most output images one engine call makes (``num_images`` counts).
    batch_window: seconds the scheduler waits for more jobs to join a batch while the GPU is
        idle (while it is busy, jobs join until it is free).
    reference_pixels: references are resized to about this many pixels.
    claim_timeout: how long one blocking claim waits (bounds shutdown latency).
    expire_every, reap_every: seconds between expiry and crash-recovery sweeps.
    warmup: run the engine's warm-up before reporting ready.
    fail_jobs_when_broken: with an engine that failed to load or died, fail the jobs (one
        worker serves them all) or leave them in the queue for healthy workers (scale-out).
    prepare_threads, finish_threads: sizes of the CPU pools around the GPU stage.
    encode_threads: images encoded at once (the images of one job are encoded in parallel).
    prefetch_steps: None: the scheduler claims jobs for the next batch at any time. k: a busy
        worker claims them only once its running batch has at most k steps left (see
        :mod:`service.worker.policy`).
    check_inputs: check reference images with the safety checker too.
    allow_disable_safety: honour ``enable_safety_checker=false`` from requests.
    fetch_policy: the SSRF guard and limits of reference downloads.
    lora_policy: where LoRA paths resolve, the download cache and its limits (None: no LoRA
        directory, downloads cached under ``~/.cache/flux2-edit/loras``).
    announce_every: seconds between the worker's announcements of its state in the queue
        (API nodes count it alive for three times as long).
    """

    max_batch_images: int = 4
    batch_window: float = 0.01
    reference_pixels: int = 1024 * 1024
    claim_timeout: float = 0.25
    expire_every: float = 30.0
    reap_every: float = 5.0
    warmup: bool = True
    prepare_threads: int = 4
    finish_threads: int = 2
    encode_threads: int = 4
    prefetch_steps: int | None = None
    fail_jobs_when_broken: bool = True
    check_inputs: bool = True
    allow_disable_safety: bool = False
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)
    lora_policy: LoraPolicy | None = None
    announce_every: float = 2.0

    @property
    def policy(self) -> BatchPolicy:
        return BatchPolicy(
            max_batch_images=self.max_batch_images,
            batch_window=self.batch_window,
            prefetch_steps=self.prefetch_steps,
        )


def default_lora_policy(fetch: FetchPolicy) -> LoraPolicy:
    """No LoRA directory; downloads (through ``fetch``'s guard) cached in the user's cache."""
    return LoraPolicy(
        directory=None, cache_dir=Path.home() / ".cache" / "flux2-edit" / "loras", fetch=fetch
    )


class Worker:
    """Runs jobs from ``queue`` on the engine made by ``engine_factory``, on its own threads."""

    def __init__(
        self,
        engine_factory: Callable[[], EditEngine],
        queue: JobQueue,
        store: ArtifactStore,
        *,
        webhooks: WebhookSender | None = None,
        options: WorkerOptions | None = None,
        name: str = "worker",
        safety_factory: Callable[[], SafetyChecker] | None = None,
        metrics: Metrics | None = None,
        model: str | None = None,
        uploads: ArtifactStore | None = None,
    ) -> None:
        self.name = name  # shown in job logs: which worker ran it
        self.model = model  # announced with the worker's state
        # The stages see the queue and the store through an outage-tolerant layer: a Redis
        # restart is ridden through, results are kept (see service/worker/outages.py).
        retrier = Retrier()
        self.queue = queue = OutageTolerantQueue(queue, retrier)
        self.store = store = OutageTolerantStore(store, retrier)
        self.options = options = options or WorkerOptions()
        policy = options.policy
        self._link = MetricsLink(metrics)
        self._held = HeldJobs()
        self._signals = Signals()
        self._handoff: Handoff[list[Prepared]] = Handoff()
        gate = SafetyGate(
            safety_factory,
            check_inputs=options.check_inputs,
            allow_disable=options.allow_disable_safety,
        )
        self._finisher = Finisher(
            queue,
            store,
            gate,
            self._held,
            self._link,
            webhooks=webhooks,
            threads=options.finish_threads,
            encode_threads=options.encode_threads,
        )
        self._loras = LoraResolver(
            options.lora_policy or default_lora_policy(options.fetch_policy),
            engine=lambda: self._gpu.engine,
        )
        self._preparer = Preparer(
            queue,
            self._finisher,
            gate,
            fetch_policy=options.fetch_policy,
            reference_pixels=options.reference_pixels,
            threads=options.prepare_threads,
            uploads=Uploads(uploads if uploads is not None else store),
            loras=self._loras,
        )
        self._gpu = GpuLoop(
            engine_factory,
            queue,
            self._finisher,
            gate,
            self._handoff,
            self._signals,
            self._held,
            self._link,
            policy=policy,
            warmup=options.warmup,
            name=name,
            fail_on_death=options.fail_jobs_when_broken,
            previews=PreviewWriter(queue, store),
        )
        self._housekeeping = Housekeeping(
            queue,
            store,
            self._finisher,
            reap_every=options.reap_every,
            expire_every=options.expire_every,
        )
        self._scheduler = Scheduler(
            queue,
            self._preparer,
            self._finisher,
            self._gpu,
            self._housekeeping,
            self._handoff,
            self._signals,
            self._held,
            policy=policy,
            claim_timeout=options.claim_timeout,
            fail_jobs_when_broken=options.fail_jobs_when_broken,
        )
        self._threads: list[threading.Thread] = []
        self._draining = False
        self._stopped = threading.Event()
        self._announcing = threading.Thread(
            target=self._announce_main, name="flux2-announce", daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._announcing.start()
        for target, name in ((self._gpu.main, "flux2-gpu"), (self._scheduler.main, "flux2-sched")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 60.0) -> None:
        """Drain: stop claiming, finish the running batch, give the rest back, then return."""
        self._draining = True
        self.announce()
        self._signals.stopping.set()
        self._signals.ready.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for batch in self._handoff.drain():
            self._finisher.release([item.job.id for item in batch])
        self._scheduler.release_deferred()
        self._finisher.shutdown()
        self._preparer.shutdown()
        self._stopped.set()
        self._announcing.join(timeout=5)
        self.queue.withdraw(self.name)

    def announce(self) -> None:
        """Tell the queue (and so every API node) that this worker is alive, in its state."""
        info = WorkerInfo(
            name=self.name,
            state=self.state.value,
            model=self.model,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self.queue.announce(info, ttl=3 * self.options.announce_every)

    def _announce_main(self) -> None:
        while not self._stopped.is_set():
            self.announce()
            self._stopped.wait(self.options.announce_every)

    # -- what others read --------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        state = self._gpu.state
        if self._draining and state in (WorkerState.READY, WorkerState.BUSY):
            return WorkerState.DRAINING
        return state

    @property
    def error(self) -> str | None:
        return self._gpu.error

    @property
    def engine(self) -> EditEngine | None:
        return self._gpu.engine

    @property
    def engine_calls(self) -> int:
        return self._gpu.engine_calls

    @property
    def held(self) -> set[str]:
        """Ids of the jobs claimed and not yet completed or given back."""
        return self._held.snapshot()

    @property
    def metrics(self) -> Metrics | None:
        return self._link.metrics

    @metrics.setter
    def metrics(self, metrics: Metrics | None) -> None:
        self._link.metrics = metrics

    def prompt_cache_stats(self) -> CacheStats | None:
        """The engine's prompt-embedding cache counters, once it is loaded."""
        engine = self._gpu.engine
        return engine.prompt_cache_stats() if engine is not None else None

    def adapter_cache_stats(self) -> CacheStats | None:
        """The engine's loaded-adapter (LoRA) cache counters, once it is loaded."""
        engine = self._gpu.engine
        return engine.adapter_cache_stats() if engine is not None else None

    def lora_file_stats(self) -> FileCacheStats | None:
        """The downloaded-LoRA file cache's counters (None before the first download)."""
        return self._loras.stats()

    def prepare(self, job: Job) -> Prepared:
        """``job`` prepared as the worker would (for tests and tools)."""
        return self._preparer.prepare(job)

    def expire(self) -> None:
        """Forget expired results and delete their files now."""
        self._housekeeping.expire()
