"""Helpers (not fixtures) to drive the worker in-process: fake engine, in-memory queue."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from service.jobs import Job, JobStatus
from service.queue.memory import InMemoryJobQueue
from tests.helpers.images import png_data_uri as data_uri
from tests.helpers.jobs import make_job
from tests.helpers.webhooks import webhook_server

__all__ = [
    "all_done",
    "data_uri",
    "make_job",
    "wait_until",
    "webhook_receiver",
]


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def all_done(queue: InMemoryJobQueue, jobs: list[Job]) -> Callable[[], bool]:
    def check() -> bool:
        views = [queue.view(job.id) for job in jobs]
        return all(v is not None and v.status is JobStatus.COMPLETED for v in views)

    return check


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback receiver recording the JSON body of every POST: (its URL, the bodies)."""
    with webhook_server() as receiver:
        yield receiver.url, receiver.bodies
