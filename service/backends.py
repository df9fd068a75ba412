"""Picks the queue and store backends the settings ask for: in-process, or Redis for scale-out."""

from __future__ import annotations

import os
import socket

from service.queue.base import JobQueue
from service.settings import Settings
from service.storage.base import ArtifactStore


def consumer_name(role: str) -> str:
    """A unique, readable name for this process in the Redis consumer group."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def make_queue(settings: Settings, *, role: str) -> JobQueue:
    if settings.redis_url:
        from service.queue.redis import RedisJobQueue

        return RedisJobQueue(
            settings.redis_url,
            consumer=consumer_name(role),
            max_queued=settings.max_queue_length,
            result_ttl=settings.result_ttl_seconds,
            lease_seconds=settings.lease_seconds,
            max_deliveries=settings.max_deliveries,
        )
    from service.queue.memory import InMemoryJobQueue

    return InMemoryJobQueue(
        max_queued=settings.max_queue_length, result_ttl=settings.result_ttl_seconds
    )


def make_store(settings: Settings) -> ArtifactStore:
    if settings.redis_url:
        from service.storage.redis import RedisArtifactStore

        return RedisArtifactStore(settings.redis_url, ttl=settings.result_ttl_seconds)
    from service.storage.local import LocalArtifactStore

    return LocalArtifactStore(settings.files_root)
