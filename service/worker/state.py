"""What the worker's stages share: the jobs it holds, its signals, the hand-over, a prepared job.

The stages run on different threads (the scheduler thread, the GPU thread, the prepare and finish
pools); everything here is safe to use from any of them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipelines.types import EditRequest
from service.endpoints import EndpointInput
from service.jobs import Job
from service.metrics import Metrics

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """A job ready for the GPU: its input and the engine request made from it."""

    job: Job
    input: EndpointInput
    request: EditRequest


@dataclass
class MetricsLink:
    """Where the stages record metrics; the app may attach its own after the worker is made."""

    metrics: Metrics | None = None


class HeldJobs:
    """Ids of the jobs this worker claimed and has not completed or given back yet."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def add(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            self._ids.update(job_ids)

    def discard(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            self._ids.difference_update(job_ids)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._ids

    def snapshot(self) -> set[str]:
        with self._lock:
            return set(self._ids)


@dataclass
class Signals:
    """The events the stages coordinate with.

    Args:
        stopping: set once the worker drains (or a loop died): no new claims.
        ready: set once setup ended, well or badly (the scheduler waits for it).
        gpu_idle: set while the GPU loop waits for a batch.
        may_claim: set while the scheduler may claim jobs for the next batch (always, or only
            near the end of the running batch: see ``BatchPolicy.prefetch_steps``).
    """

    stopping: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)
    gpu_idle: threading.Event = field(default_factory=threading.Event)
    may_claim: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.may_claim.set()


class Handoff(Generic[T]):
    """One batch at a time from the scheduler to the GPU loop (``None`` tells it to stop)."""

    def __init__(self) -> None:
        self._slot: queue.Queue[T | None] = queue.Queue(maxsize=1)

    def put(self, batch: T, stopping: threading.Event, poll: float = 0.1) -> bool:
        """Hand ``batch`` over once the GPU took the previous one; False when the worker began
        stopping first (the batch was not handed over)."""
        while not stopping.is_set():
            try:
                self._slot.put(batch, timeout=poll)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> T | None:
        """The next batch, or None: stop."""
        return self._slot.get()

    def stop(self) -> None:
        self._slot.put(None)

    def drain(self) -> list[T]:
        """Batches handed over but never taken (a drain gives their jobs back)."""
        left: list[T] = []
        while True:
            try:
                item = self._slot.get_nowait()
            except queue.Empty:
                return left
            if item is not None:
                left.append(item)
