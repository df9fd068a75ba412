"""The in-process job queue on its own: order, priority, waiting, cancel, completion, expiry."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import QueueFull
from service.jobs import CancelOutcome, Job, JobStatus, LogEntry, Outcome, Priority
from service.outcomes import CANCELLED
from service.queue.memory import InMemoryJobQueue
from tests.helpers.jobs import make_job

OK = Outcome(status_code=200, body={"images": []}, inference_time=0.1)


def _job(priority: Priority = Priority.NORMAL) -> Job:
    return make_job(priority=priority)


def _positions(queue: InMemoryJobQueue, jobs: list[Job]) -> list[int | None]:
    views = [queue.view(job.id) for job in jobs]
    return [v.queue_position if v is not None else None for v in views]


def test_fifo() -> None:
    queue = InMemoryJobQueue()
    jobs = [_job() for _ in range(4)]
    for job in jobs:
        queue.submit(job)
    assert _positions(queue, jobs) == [0, 1, 2, 3]
    assert [j.id for j in queue.claim(1, 0)] == [jobs[0].id]
    assert _positions(queue, jobs) == [None, 0, 1, 2]
    claimed = queue.claim(10, 0)
    assert [j.id for j in claimed] == [j.id for j in jobs[1:]]
    for job in jobs:
        view = queue.view(job.id)
        assert view is not None and view.status is JobStatus.IN_PROGRESS
    assert all(job.deliveries == 1 and job.started_at is not None for job in jobs)


def test_low_priority_after_normal() -> None:
    queue = InMemoryJobQueue()
    low1, normal1, low2, normal2 = (
        _job(Priority.LOW),
        _job(),
        _job(Priority.LOW),
        _job(),
    )
    for job in (low1, normal1, low2, normal2):
        queue.submit(job)
    assert _positions(queue, [normal1, normal2, low1, low2]) == [0, 1, 2, 3]
    order = [queue.claim(1, 0)[0].id for _ in range(4)]
    assert order == [normal1.id, normal2.id, low1.id, low2.id]


def test_claim_times_out_empty() -> None:
    queue = InMemoryJobQueue()
    started = time.monotonic()
    assert queue.claim(4, 0.2) == []
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 1.0


def test_claim_wakes_on_submit() -> None:
    queue = InMemoryJobQueue()
    job = _job()
    got: list[list[Job]] = []
    thread = threading.Thread(target=lambda: got.append(queue.claim(1, 5)))
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    queue.submit(job)
    thread.join(2)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1
    assert [j.id for j in got[0]] == [job.id]


def test_close_wakes_a_waiting_claim() -> None:
    queue = InMemoryJobQueue()
    got: list[list[Job]] = []
    thread = threading.Thread(target=lambda: got.append(queue.claim(1, 10)))
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    queue.close()
    thread.join(2)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1
    assert got == [[]]
    assert queue.claim(1, 5) == []  # closed: answers at once


def test_queue_full() -> None:
    queue = InMemoryJobQueue(max_queued=2)
    queue.submit(_job())
    queue.submit(_job())
    rejected = _job()
    with pytest.raises(QueueFull):
        queue.submit(rejected)
    assert queue.view(rejected.id) is None
    queue.claim(1, 0)  # a running job does not count as waiting
    queue.submit(_job())


def test_cancel() -> None:
    queue = InMemoryJobQueue()
    assert queue.cancel("nope").outcome is CancelOutcome.NOT_FOUND
    queued, running, later = _job(), _job(), _job()
    queue.submit(running)
    queue.submit(queued)
    queue.submit(later)
    queue.claim(1, 0)
    assert _positions(queue, [queued, later]) == [0, 1]
    assert queue.cancel(queued.id).outcome is CancelOutcome.REQUESTED
    view = queue.view(queued.id)
    assert view is not None and view.status is JobStatus.COMPLETED
    assert view.outcome == CANCELLED
    assert _positions(queue, [later]) == [0]
    assert queue.cancel(running.id).outcome is CancelOutcome.REQUESTED
    assert queue.is_cancelled(running.id)
    view = queue.view(running.id)
    assert view is not None and view.status is JobStatus.IN_PROGRESS  # the worker stops it
    assert queue.cancel(queued.id).outcome is CancelOutcome.ALREADY_COMPLETED
    assert [j.id for j in queue.claim(5, 0)] == [later.id]  # the cancelled job is never handed out
    assert not queue.is_cancelled(later.id)
    assert queue.is_cancelled("unknown")  # gone: stop working on it


def test_released_cancelled_job_is_not_handed_out_again() -> None:
    """``claim``'s contract: cancelled jobs are never handed out, a released one included."""
    queue = InMemoryJobQueue()
    job = _job()
    queue.submit(job)
    queue.claim(1, 0)
    assert queue.cancel(job.id).outcome is CancelOutcome.REQUESTED
    queue.release([job.id])  # e.g. a draining worker gives back a batch it did not start
    assert queue.claim(1, 0) == []
    view = queue.view(job.id)
    assert view is not None and view.status is JobStatus.COMPLETED
    assert view.outcome is not None and view.outcome.error_type == "client_cancelled"


def test_release_goes_to_the_front() -> None:
    queue = InMemoryJobQueue()
    first, second, third = _job(), _job(), _job()
    for job in (first, second, third):
        queue.submit(job)
    claimed = queue.claim(2, 0)
    queue.release([j.id for j in claimed])
    assert _positions(queue, [first, second, third]) == [0, 1, 2]
    again = queue.claim(1, 0)[0]
    assert again.id == first.id and again.deliveries == 2


def test_complete_once_and_logs() -> None:
    queue = InMemoryJobQueue()
    job = _job()
    queue.submit(job)
    queue.claim(1, 0)
    queue.log(job.id, LogEntry("step 1/2"))
    assert queue.complete(job.id, OK) is job
    failed = Outcome(status_code=500, body={"detail": "x"}, error="x", error_type="internal_error")
    assert queue.complete(job.id, failed) is None  # the first completion wins
    assert queue.complete("unknown", OK) is None
    queue.log(job.id, LogEntry("late"))  # ignored once completed
    view = queue.view(job.id)
    assert view is not None
    assert view.outcome == OK
    assert [entry.message for entry in view.logs] == ["step 1/2"]


def test_finish_now() -> None:
    queue = InMemoryJobQueue()
    job = _job()
    queue.finish_now(job, OK)
    view = queue.view(job.id)
    assert view is not None and view.status is JobStatus.COMPLETED
    assert queue.claim(1, 0) == []


def test_expire() -> None:
    queue = InMemoryJobQueue(result_ttl=0.1)
    done, waiting = _job(), _job()
    queue.submit(done)
    queue.claim(1, 0)
    queue.complete(done.id, OK)
    queue.submit(waiting)
    assert queue.expire() == []
    deadline = time.monotonic() + 2
    while queue.view(done.id) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert queue.cancel(done.id).outcome is CancelOutcome.NOT_FOUND
    assert queue.expire() == [done.id]
    assert queue.view(waiting.id) is not None  # only completed jobs expire
