"""When to claim, how long to gather, when to leave stragglers, what shares a batch: a pure policy.

Nothing here sleeps, starts a thread or touches a queue: the scheduler asks, with the current
time from an injected clock, and does what the answer says. So every rule is unit-tested with a
fake clock (``tests/worker/test_policy.py``).

The rules:

* **Gathering.** After the first job of a batch is claimed, compatible others may join up to
  ``max_batch_images`` output images: for as long as the GPU is busy with the previous batch (the
  jobs would wait anyway), and for ``batch_window`` seconds at most once it is idle (a lone request
  waits no longer than that). A job too big to join is given back, first in line for the next.
* **Stragglers.** Once one job's inputs are ready and the GPU is idle, jobs whose inputs are still
  downloading (a slow image host) are waited for at least ``straggler_grace`` seconds and
  ``straggler_factor`` times as long as the first job took (a busy CPU slows every job alike);
  then they are left for a later batch and the others go.
* **Prefetch.** With ``prefetch_steps`` None the next batch may be gathered at any time (one
  worker: nothing is lost by holding jobs while the GPU works). With k, a busy worker claims only
  once its running batch has at most k steps left (several workers share a queue: jobs are left
  to idle workers instead of waiting behind a busy one).
* **Grouping.** A batch is the oldest prepared job and every other prepared job with the same
  batch key (same tensor shapes); the rest are given back.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Clock = Callable[[], float]

#: While the GPU is busy, how often the scheduler looks whether it has become free.
GATHER_POLL_SECONDS = 0.01
STRAGGLER_GRACE_SECONDS = 0.25
STRAGGLER_FACTOR = 4


@dataclass(frozen=True)
class BatchPolicy:
    """The scheduling rules (see the module docstring) and their parameters."""

    max_batch_images: int = 4
    batch_window: float = 0.01
    gather_poll: float = GATHER_POLL_SECONDS
    straggler_grace: float = STRAGGLER_GRACE_SECONDS
    straggler_factor: float = STRAGGLER_FACTOR
    prefetch_steps: int | None = None

    def gathering(self, now: float, images: int) -> Gathering:
        """The gathering of one batch, started at ``now`` with ``images`` images claimed."""
        return Gathering(self, deadline=now + self.batch_window, images=images)

    def stragglers(self, now: float) -> Stragglers:
        """The wait for the claimed jobs' inputs, started at ``now``."""
        return Stragglers(self, started=now)

    def may_prefetch(self, steps_left: int) -> bool:
        """Whether a busy worker with ``steps_left`` steps to run may claim the next jobs."""
        return self.prefetch_steps is None or steps_left <= self.prefetch_steps

    @property
    def claims_while_busy(self) -> bool:
        """Whether claiming stays allowed from the start of a batch (no prefetch limit)."""
        return self.prefetch_steps is None


@dataclass
class Gathering:
    """Claims joining one batch: how long to wait for the next, and whether it fits."""

    policy: BatchPolicy
    deadline: float
    images: int

    def next_wait(self, now: float, *, gpu_idle: bool) -> float | None:
        """Seconds to wait for another job, or None: stop gathering, the batch goes."""
        if self.images >= self.policy.max_batch_images:
            return None
        left = self.deadline - now
        if left > 0:
            return left
        return None if gpu_idle else self.policy.gather_poll

    def admits(self, images: int) -> bool:
        """Whether a job of ``images`` output images fits in what is left of the batch."""
        return self.images + images <= self.policy.max_batch_images

    def add(self, images: int) -> None:
        self.images += images


@dataclass
class Stragglers:
    """When the jobs still preparing are left behind for a later batch."""

    policy: BatchPolicy
    started: float
    grace: float | None = None  # known once the first preparation has ended

    def leave_pending(self, now: float, *, done: int, pending: int, gpu_idle: bool) -> bool:
        """Whether to stop waiting for the ``pending`` preparations (``done`` have ended)."""
        waited = now - self.started
        if self.grace is None and done > 0:
            self.grace = max(self.policy.straggler_grace, self.policy.straggler_factor * waited)
        return pending > 0 and self.grace is not None and waited >= self.grace and gpu_idle


def split_by_key(items: Sequence[T], key: Callable[[T], Hashable]) -> tuple[list[T], list[T]]:
    """The first item's group (every item with its key, in order) and the others."""
    if not items:
        return [], []
    first = key(items[0])
    keys = [key(item) for item in items]
    group = [item for item, k in zip(items, keys, strict=True) if k == first]
    others = [item for item, k in zip(items, keys, strict=True) if k != first]
    return group, others
