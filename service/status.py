"""What the HTTP layer may know of a worker: its state, its error, and how to start and stop it.

The app (readiness, metrics) and the bootstrap depend on this, never on the worker's modules, so
the HTTP layer imports nothing of the GPU side.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

from pipelines.prompt_cache import CacheStats


class WorkerState(StrEnum):
    """After cog: ``starting`` → ``ready`` ⇄ ``busy`` → ``draining`` (stopping: the running
    batch finishes, nothing new is claimed); ``setup_failed`` when the engine cannot load (jobs
    then fail at once with a clear error); ``defunct`` when a worker loop died."""

    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    SETUP_FAILED = "setup_failed"
    DEFUNCT = "defunct"
    DRAINING = "draining"

    @property
    def serving(self) -> bool:
        """Whether a worker in this state takes jobs."""
        return self in (WorkerState.READY, WorkerState.BUSY)


class WorkerHandle(Protocol):
    """An in-process worker, as the app that embeds it sees it."""

    @property
    def state(self) -> WorkerState: ...

    @property
    def error(self) -> str | None: ...

    def prompt_cache_stats(self) -> CacheStats | None: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 60.0) -> None: ...
