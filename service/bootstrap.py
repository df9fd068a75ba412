"""One bootstrap: settings become the queue, store, webhooks, metrics, worker and app.

``flux2-edit serve`` (the API with a worker in the same process), ``api`` (an API node; workers
elsewhere share its Redis) and ``worker`` (a GPU worker, no HTTP) differ only in their
:class:`Role`. Tests and benchmarks build the same components with a fake engine or checker
passed in, so every process is wired by this one module::

    settings ─▶ build(settings, role) ─▶ Components(queue, store, webhooks, metrics, worker)
                                              └─▶ build_app(components) ─▶ FastAPI app

Heavy imports (torch, diffusers) happen only when an engine is made, on the worker's thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pipelines.protocol import EditEngine
from pipelines.safety import SafetyChecker, make_safety_checker
from service.inputs import FetchPolicy
from service.loras import LoraPolicy
from service.metrics import Metrics
from service.queue.base import JobQueue
from service.settings import Settings
from service.storage.base import ArtifactStore
from service.webhooks import WebhookSender
from service.worker import Worker, WorkerOptions

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

#: Steps before the end of its batch at which a busy worker sharing Redis claims the next jobs.
PREFETCH_STEPS = 2


class Role(StrEnum):
    SERVE = "serve"  # API + worker in one process
    API = "api"  # API node: no model
    WORKER = "worker"  # GPU worker: no HTTP API


@dataclass
class Components:
    """What one process runs. ``worker`` is None for an API node."""

    settings: Settings
    role: Role
    queue: JobQueue
    store: ArtifactStore
    webhooks: WebhookSender
    metrics: Metrics
    worker: Worker | None
    uploads: ArtifactStore | None = None  # files clients uploaded (None: the output store)

    def close(self) -> None:
        """Stop sending webhooks and close the queue (after the worker stopped)."""
        self.webhooks.close()
        self.queue.close()


def consumer_name(role: Role | str) -> str:
    """A unique, readable name for this process in the Redis consumer group."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def make_queue(settings: Settings, role: Role) -> JobQueue:
    """The in-process queue, or the Redis one when ``redis_url`` is set."""
    queue = settings.queue
    if queue.redis_url:
        from service.queue.redis import RedisJobQueue

        return RedisJobQueue(
            queue.redis_url,
            consumer=consumer_name(role),
            max_queued=queue.max_queue_length,
            result_ttl=queue.result_ttl_seconds,
            lease_seconds=queue.lease_seconds,
            max_deliveries=queue.max_deliveries,
        )
    from service.queue.memory import InMemoryJobQueue

    return InMemoryJobQueue(max_queued=queue.max_queue_length, result_ttl=queue.result_ttl_seconds)


def make_store(settings: Settings) -> ArtifactStore:
    """Local disk, or Redis (shared by every node) when the queue is on Redis."""
    if settings.queue.redis_url:
        from service.storage.redis import RedisArtifactStore

        return RedisArtifactStore(settings.queue.redis_url, ttl=settings.queue.result_ttl_seconds)
    from service.storage.local import LocalArtifactStore

    return LocalArtifactStore(settings.storage.files_root)


def make_upload_store(settings: Settings) -> ArtifactStore:
    """Where uploads live (``service/uploads.py``): Redis when the queue is, else local disk;
    either way they expire after ``upload_ttl_seconds``."""
    storage = settings.storage
    if settings.queue.redis_url:
        from service.storage.redis import RedisArtifactStore

        return RedisArtifactStore(
            settings.queue.redis_url, ttl=storage.upload_ttl_seconds, key_prefix="flux2:uploads:"
        )
    from service.storage.local import LocalArtifactStore

    return LocalArtifactStore(storage.uploads_root, ttl=storage.upload_ttl_seconds)


def worker_options(settings: Settings, role: Role) -> WorkerOptions:
    """The worker's options. A lone ``serve`` worker fails jobs when its model cannot load and
    prefetches freely; workers sharing Redis leave jobs to others (see ``prefetch_steps``)."""
    shared = settings.queue.redis_url is not None
    return WorkerOptions(
        max_batch_images=settings.batching.max_batch_images,
        batch_window=settings.batching.batch_window_ms / 1000,
        reference_pixels=settings.engine.reference_pixels,
        warmup=settings.engine.warmup,
        fail_jobs_when_broken=role is Role.SERVE,
        # With Redis other workers may be idle: a busy one takes the next batch's jobs only in
        # its last steps (enough to prepare them before the GPU is free).
        prefetch_steps=PREFETCH_STEPS if shared else None,
        check_inputs=settings.safety.safety_check_inputs,
        allow_disable_safety=settings.safety.allow_disable_safety_checker,
        fetch_policy=FetchPolicy.from_settings(settings.fetch),
        lora_policy=LoraPolicy.from_settings(settings),
    )


def loaded_safety_checker(settings: Settings) -> SafetyChecker:
    """The configured checker, loaded now: one that cannot load stops the process from
    starting (fail closed, and early)."""
    safety = settings.safety
    checker = make_safety_checker(
        safety.safety_checker, threshold=safety.safety_threshold, model_dir=safety.safety_model_dir
    )
    checker.load()
    return checker


def engine_factory(settings: Settings) -> Callable[[], EditEngine]:
    """Makes the FLUX.2 engine the settings describe (called on the worker's GPU thread)."""

    def make() -> EditEngine:
        from service.engines import create_engine

        return create_engine(settings, progress=logger.info)

    return make


def build(
    settings: Settings,
    role: Role,
    *,
    engine: Callable[[], EditEngine] | None = None,
    safety: Callable[[], SafetyChecker] | None = None,
    queue: JobQueue | None = None,
    store: ArtifactStore | None = None,
    webhooks: WebhookSender | None = None,
    metrics: Metrics | None = None,
    uploads: ArtifactStore | None = None,
    options: Mapping[str, Any] | None = None,
) -> Components:
    """The components of a ``role`` process.

    Args:
        engine: the engine factory (default: FLUX.2 as the settings say).
        safety: the safety checker factory (default: the configured one, loaded now).
        queue, store, webhooks, metrics, uploads: made from the settings when not given.
        options: :class:`WorkerOptions` fields to change (tests: ``warmup``, ``claim_timeout``).
    """
    queue = queue if queue is not None else make_queue(settings, role)
    store = store if store is not None else make_store(settings)
    webhooks = webhooks if webhooks is not None else WebhookSender.from_settings(settings.webhooks)
    metrics = metrics if metrics is not None else Metrics()
    uploads = uploads if uploads is not None else make_upload_store(settings)
    worker = None
    if role is not Role.API:
        if safety is None:
            checker = loaded_safety_checker(settings)
            safety = lambda: checker  # noqa: E731 - loaded above; the worker loads it again (cheap)
        worker = Worker(
            engine if engine is not None else engine_factory(settings),
            queue,
            store,
            webhooks=webhooks,
            options=dataclasses.replace(worker_options(settings, role), **(options or {})),
            name=consumer_name(role),
            safety_factory=safety,
            metrics=metrics,
            model=settings.engine.model,
            uploads=uploads,
        )
    metrics.bind(queue=queue, worker=worker)
    return Components(settings, role, queue, store, webhooks, metrics, worker, uploads)


def build_app(components: Components) -> FastAPI:
    """The HTTP app of ``components`` (its worker, if any, starts and stops with it)."""
    from service.app import create_app

    settings = components.settings
    if settings.queue.redis_url and settings.storage.upload_secret is None:
        logger.warning(
            "FLUX2_UPLOAD_SECRET is not set: upload URLs are signed with a key of this process "
            "only, so an upload started here must be finished here (set the same secret on "
            "every API node)"
        )
    return create_app(
        components.settings,
        queue=components.queue,
        store=components.store,
        worker=components.worker,
        webhooks=components.webhooks,
        metrics=components.metrics,
        uploads=components.uploads,
    )
