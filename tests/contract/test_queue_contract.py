"""The JobQueue contract: every test runs on the in-memory and the Redis backend alike.

Redis-only behaviour (several consumers, leases, the reaper, dead letters) is at the end, under
``test_redis_*`` names; those tests take the ``redis_queues`` fixture and run once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from core.errors import QueueFull, StorageError
from service.jobs import CancelOutcome, Job, JobStatus, LogEntry, Outcome, Priority, Reaped
from service.queue.base import JobQueue
from tests.helpers.jobs import edit_input, make_job

QueueFactory = Callable[..., JobQueue]  # the ``queue_factory`` fixture
RedisQueues = Callable[..., Any]  # the ``redis_queues`` fixture

OK = Outcome(status_code=200, body={"images": []}, inference_time=0.5)
FAILED = Outcome(status_code=500, body={"detail": "boom"}, error="boom", error_type="internal")


def job(job_id: str, priority: str = "normal", **fields: Any) -> Job:
    return make_job(
        job_id,
        input={"prompt": f"edit {job_id}"},
        base_url="http://api.test",
        priority=Priority(priority),
        **fields,
    )


def positions(queue: JobQueue, *ids: str) -> list[int | None]:
    views = [queue.view(job_id) for job_id in ids]
    return [view.queue_position if view else -1 for view in views]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


# -- submit, view, positions -----------------------------------------------------------------


def test_submit_then_view_shows_queue_positions(queue: JobQueue) -> None:
    queue.submit(job("a", owner="key-1"))
    queue.submit(job("b"))
    queue.submit(job("low", "low"))
    queue.submit(job("c"))
    assert positions(queue, "a", "b", "c", "low") == [0, 1, 2, 3]  # low waits behind normal

    view = queue.view("a")
    assert view is not None
    assert (view.id, view.status, view.logs, view.outcome) == ("a", JobStatus.IN_QUEUE, (), None)
    assert view.owner == "key-1"


def test_view_of_an_unknown_id_is_none(queue: JobQueue) -> None:
    assert queue.view("never-submitted") is None


def test_positions_move_up_as_jobs_are_claimed(queue: JobQueue) -> None:
    for name in ("a", "b", "c"):
        queue.submit(job(name))
    queue.claim(1, 0)
    assert positions(queue, "a", "b", "c") == [None, 0, 1]


# -- claim -----------------------------------------------------------------------------------


def test_claim_takes_normal_before_low_and_at_most_max_jobs(queue: JobQueue) -> None:
    queue.submit(job("low-1", "low"))
    queue.submit(job("n-1"))
    queue.submit(job("n-2"))
    queue.submit(job("low-2", "low"))

    first = queue.claim(3, 1.0)
    assert [j.id for j in first] == ["n-1", "n-2", "low-1"]
    assert all(j.status is JobStatus.IN_PROGRESS and j.started_at for j in first)
    assert [j.id for j in queue.claim(5, 1.0)] == ["low-2"]

    view = queue.view("n-1")
    assert view is not None
    assert (view.status, view.queue_position) == (JobStatus.IN_PROGRESS, None)


def test_claim_on_an_empty_queue_returns_nothing_after_the_timeout(queue: JobQueue) -> None:
    started = time.monotonic()
    assert queue.claim(1, 0.3) == []
    assert 0.25 <= time.monotonic() - started < 2.0


def test_a_waiting_claim_wakes_up_for_a_new_job(queue: JobQueue) -> None:
    timer = threading.Timer(0.2, lambda: queue.submit(job("late")))
    timer.start()
    started = time.monotonic()
    try:
        claimed = queue.claim(1, 5.0)
    finally:
        timer.join()
    assert [j.id for j in claimed] == ["late"]
    assert time.monotonic() - started < 2.0


def test_claim_never_hands_out_a_cancelled_job(queue: JobQueue) -> None:
    queue.submit(job("a"))
    queue.submit(job("b"))
    assert queue.cancel("a").outcome is CancelOutcome.REQUESTED
    assert [j.id for j in queue.claim(5, 0.1)] == ["b"]
    assert queue.claim(5, 0.05) == []


def test_each_claim_counts_a_delivery(queue: JobQueue) -> None:
    queue.submit(job("a"))
    (first,) = queue.claim(1, 1.0)
    assert first.deliveries == 1
    queue.release(["a"])
    (again,) = queue.claim(1, 1.0)
    assert again.deliveries == 2


# -- logs and completion ---------------------------------------------------------------------


def test_logs_are_kept_in_order_and_frozen_once_completed(queue: JobQueue) -> None:
    queue.submit(job("a"))
    queue.claim(1, 1.0)
    lines = [LogEntry(f"step {i}/3") for i in range(1, 4)]
    for line in lines:
        queue.log("a", line)
    view = queue.view("a")
    assert view is not None
    assert view.logs == tuple(lines)

    queue.log("a", LogEntry("Completed"))
    queue.complete("a", OK)
    queue.log("a", LogEntry("too late"))
    queue.log("unknown", LogEntry("nobody listens"))
    view = queue.view("a")
    assert view is not None
    assert [entry.message for entry in view.logs] == [*(e.message for e in lines), "Completed"]


def test_complete_is_idempotent_first_outcome_wins(queue: JobQueue) -> None:
    queue.submit(job("a", webhook_url="http://hook.test/h"))
    queue.claim(1, 1.0)

    done = queue.complete("a", OK)
    assert done is not None
    assert (done.id, done.status, done.outcome) == ("a", JobStatus.COMPLETED, OK)
    assert done.webhook_url == "http://hook.test/h"
    assert done.completed_at is not None

    assert queue.complete("a", FAILED) is None  # e.g. a second run after a lease lapsed
    assert queue.complete("unknown", OK) is None
    view = queue.view("a")
    assert view is not None
    assert (view.status, view.outcome, view.queue_position) == (JobStatus.COMPLETED, OK, None)


def test_finish_now_records_a_completed_job(queue: JobQueue) -> None:
    queue.finish_now(job("bad", owner="key-1"), FAILED)
    view = queue.view("bad")
    assert view is not None
    assert (view.status, view.outcome, view.queue_position) == (JobStatus.COMPLETED, FAILED, None)
    assert view.owner == "key-1"
    assert queue.complete("bad", OK) is None
    assert queue.cancel("bad").outcome is CancelOutcome.ALREADY_COMPLETED
    assert queue.claim(1, 0.05) == []


# -- cancel ----------------------------------------------------------------------------------


def test_cancelling_a_queued_job_completes_it_at_once(queue: JobQueue) -> None:
    queue.submit(job("a", webhook_url="http://hook.test/a"))
    queue.submit(job("b"))
    assert queue.is_cancelled("a") is False
    result = queue.cancel("a")
    assert result.outcome is CancelOutcome.REQUESTED
    # The cancel completed it: the caller gets the job, to send its webhook.
    done = result.completed
    assert done is not None
    assert (done.id, done.webhook_url, done.status) == (
        "a",
        "http://hook.test/a",
        JobStatus.COMPLETED,
    )
    assert done.outcome is not None and done.outcome.status_code == 499

    view = queue.view("a")
    assert view is not None
    assert view.status is JobStatus.COMPLETED
    assert view.queue_position is None
    assert view.outcome is not None
    assert (view.outcome.status_code, view.outcome.error_type) == (499, "client_cancelled")
    assert view.outcome.body["error_type"] == "client_cancelled"
    assert positions(queue, "b") == [0]  # no longer counted ahead of anyone
    assert queue.is_cancelled("a") is True


def test_cancelling_a_running_job_flags_it(queue: JobQueue) -> None:
    queue.submit(job("a"))
    queue.claim(1, 1.0)
    assert queue.is_cancelled("a") is False
    result = queue.cancel("a")
    assert result.outcome is CancelOutcome.REQUESTED
    assert result.completed is None  # the worker completes it (and sends the webhook)
    assert queue.is_cancelled("a") is True
    view = queue.view("a")
    assert view is not None
    assert view.status is JobStatus.IN_PROGRESS  # the worker stops it and completes it
    assert queue.complete("a", OK) is not None


def test_cancel_answers_for_completed_and_unknown_jobs(queue: JobQueue) -> None:
    queue.submit(job("a"))
    queue.claim(1, 1.0)
    queue.complete("a", OK)
    assert queue.cancel("a").outcome is CancelOutcome.ALREADY_COMPLETED
    assert queue.cancel("unknown").outcome is CancelOutcome.NOT_FOUND
    assert queue.is_cancelled("unknown") is True  # nothing to run


# -- release and limits ----------------------------------------------------------------------


def test_released_jobs_go_back_to_the_front(queue: JobQueue) -> None:
    for name in ("a", "b", "c"):
        queue.submit(job(name))
    queue.submit(job("low", "low"))
    assert [j.id for j in queue.claim(2, 1.0)] == ["a", "b"]

    queue.release(["a", "b"])
    assert positions(queue, "a", "b", "c", "low") == [0, 1, 2, 3]
    view = queue.view("a")
    assert view is not None
    assert view.status is JobStatus.IN_QUEUE

    again = queue.claim(1, 1.0)
    assert [j.id for j in again] == ["a"]
    assert again[0].started_at is not None
    assert [j.id for j in queue.claim(5, 1.0)] == ["b", "c", "low"]


def test_a_released_low_priority_job_goes_before_normal_ones(queue: JobQueue) -> None:
    queue.submit(job("low", "low"))
    assert [j.id for j in queue.claim(1, 1.0)] == ["low"]
    queue.submit(job("normal"))
    queue.release(["low"])
    assert positions(queue, "low", "normal") == [0, 1]
    assert [j.id for j in queue.claim(2, 1.0)] == ["low", "normal"]


def test_a_job_cancelled_while_held_is_completed_on_release(queue: JobQueue) -> None:
    queue.submit(job("held", webhook_url="http://hook.test/held"))
    queue.submit(job("other"))
    assert [j.id for j in queue.claim(2, 1.0)] == ["held", "other"]
    assert queue.cancel("held").completed is None  # running: flagged only
    (done,) = queue.release(["held", "other"])  # the caller sends its webhook
    assert (done.id, done.webhook_url, done.status) == (
        "held",
        "http://hook.test/held",
        JobStatus.COMPLETED,
    )
    assert done.outcome is not None and done.outcome.status_code == 499
    assert [j.id for j in queue.claim(5, 0.2)] == ["other"]  # never handed out again


def test_release_ignores_jobs_that_are_not_running(queue: JobQueue) -> None:
    queue.submit(job("queued"))
    queue.finish_now(job("done"), OK)
    assert queue.release(["queued", "done", "unknown"]) == []
    queue.heartbeat(["queued", "done", "unknown"])
    assert positions(queue, "queued") == [0]
    view = queue.view("done")
    assert view is not None
    assert view.status is JobStatus.COMPLETED


def test_submit_beyond_max_queued_raises_queue_full(queue_factory: QueueFactory) -> None:
    queue = queue_factory(max_queued=2)
    queue.submit(job("a"))
    queue.submit(job("b", "low"))
    with pytest.raises(QueueFull):
        queue.submit(job("c"))
    assert queue.view("c") is None
    queue.claim(1, 1.0)  # running jobs do not count
    queue.submit(job("c"))


# -- expiry and records ----------------------------------------------------------------------


def test_results_expire_after_result_ttl(queue_factory: QueueFactory) -> None:
    queue = queue_factory(result_ttl=0.4)
    queue.submit(job("ran"))
    queue.claim(1, 1.0)
    queue.log("ran", LogEntry("step 1/1"))
    queue.complete("ran", OK)
    queue.finish_now(job("failed"), FAILED)
    queue.submit(job("waiting"))  # queued jobs never expire

    assert queue.view("ran") is not None
    wait_for(lambda: queue.view("ran") is None and queue.view("failed") is None, timeout=5)
    assert queue.cancel("ran").outcome is CancelOutcome.NOT_FOUND
    expired: set[str] = set()
    wait_for(lambda: expired.update(queue.expire()) or expired == {"ran", "failed"})
    assert queue.expire() == []  # each id once
    assert positions(queue, "waiting") == [0]


def test_a_job_survives_the_round_trip_through_the_queue(queue: JobQueue) -> None:
    original = Job(
        id="round-trip",
        input=edit_input(prompt="a cat é✓", image_urls=["https://x.test/a.png"], num_images=2,
                         image_size={"width": 512, "height": 768}, seed=None),
        base_url="https://api.test/prefix",
        webhook_url="https://hooks.test/h?x=1",
        priority=Priority.LOW,
        start_deadline=1_900_000_000.25,
        created_at=1_800_000_000.5,
        owner="fingerprint",
    )  # fmt: skip
    assert Job.from_json(original.to_json()) == original

    queue.submit(original)
    (claimed,) = queue.claim(1, 1.0)
    for name in ("id", "input", "base_url", "webhook_url", "priority", "start_deadline",
                 "created_at", "owner"):  # fmt: skip
        assert getattr(claimed, name) == getattr(original, name), name
    assert claimed.priority is Priority.LOW


# -- Redis only: several consumers, leases, the reaper ---------------------------------------


def test_redis_two_consumers_never_get_the_same_job(redis_queues: RedisQueues) -> None:
    a, b = redis_queues("worker-a"), redis_queues("worker-b")
    ids = [f"job-{i}" for i in range(40)]
    got: dict[str, list[str]] = {"a": [], "b": []}

    def drain(name: str, queue: Any) -> None:
        while claimed := queue.claim(2, 0.2):
            got[name].extend(j.id for j in claimed)
            for j in claimed:
                queue.complete(j.id, OK)

    for job_id in ids:
        a.submit(job(job_id))
    threads = [threading.Thread(target=drain, args=item) for item in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(got["a"] + got["b"]) == sorted(ids)  # each exactly once
    assert not set(got["a"]) & set(got["b"])


def test_redis_an_expired_lease_hands_the_job_to_another_worker(redis_queues: RedisQueues) -> None:
    a = redis_queues("worker-a", lease_seconds=0.5)
    b = redis_queues("worker-b", lease_seconds=0.5)
    a.submit(job("x"))
    assert [j.id for j in a.claim(1, 1.0)] == ["x"]
    assert b.reap() == Reaped()  # the lease is alive
    assert not b.reap()
    assert b.claim(1, 0.05) == []

    time.sleep(0.7)  # worker-a died: no heartbeat
    assert b.reap() == Reaped(requeued=("x",))
    view = b.view("x")
    assert view is not None
    assert (view.status, view.queue_position) == (JobStatus.IN_QUEUE, 0)
    assert any(entry.level == "WARN" for entry in view.logs)

    (again,) = b.claim(1, 1.0)
    assert (again.id, again.deliveries) == ("x", 2)
    a.heartbeat(["x"])  # a late heartbeat of the old owner does not take it back
    time.sleep(0.7)
    assert a.reap().requeued == ("x",)  # worker-b's lease lapsed too, not renewed by worker-a

    # The first completion wins; the stale copy learns it has nothing left to do.
    (third,) = a.claim(1, 1.0)
    assert third.deliveries == 3
    assert b.complete("x", OK) is not None
    assert a.is_cancelled("x") is True
    assert a.complete("x", FAILED) is None


def test_redis_a_heartbeat_keeps_a_long_job(redis_queues: RedisQueues) -> None:
    a = redis_queues("worker-a", lease_seconds=0.5)
    b = redis_queues("worker-b", lease_seconds=0.5)
    a.submit(job("long"))
    a.claim(1, 1.0)
    for _ in range(10):  # 1 s: well past the lease
        time.sleep(0.1)
        a.heartbeat(["long"])
        assert b.reap() == Reaped()
    view = b.view("long")
    assert view is not None
    assert view.status is JobStatus.IN_PROGRESS
    assert a.complete("long", OK) is not None


def test_redis_a_job_lost_max_deliveries_times_is_dead_lettered(
    redis_queues: RedisQueues, redis_url: str
) -> None:
    options = {"lease_seconds": 0.3, "max_deliveries": 2}
    a, b = redis_queues("worker-a", **options), redis_queues("worker-b", **options)
    a.submit(job("poison", webhook_url="http://hook.test"))
    for _ in range(3):  # releases are not losses
        a.claim(1, 1.0)
        a.release(["poison"])
    a.claim(1, 1.0)
    time.sleep(0.45)
    assert b.reap() == Reaped(requeued=("poison",))
    (claimed,) = b.claim(1, 1.0)
    assert claimed.deliveries == 5
    time.sleep(0.45)
    reaped = a.reap()
    assert reaped.requeued == ()
    (dead,) = reaped.failed  # completed as failed: its webhook is the reaper's to send
    assert (dead.id, dead.webhook_url, dead.status) == (
        "poison",
        "http://hook.test",
        JobStatus.COMPLETED,
    )
    assert dead.outcome is not None and dead.outcome.error_type == "runner_disconnected"

    view = a.view("poison")
    assert view is not None
    assert view.status is JobStatus.COMPLETED
    assert view.outcome is not None
    assert (view.outcome.status_code, view.outcome.error_type) == (500, "runner_disconnected")
    assert view.outcome.body["error_type"] == "runner_disconnected"
    assert view.outcome.error
    assert b.complete("poison", OK) is None
    assert a.claim(1, 0.05) == []
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ((_, fields),) = client.xrange(a.dead_letters)
    finally:
        client.close()
    assert (fields["id"], fields["consumer"]) == ("poison", "worker-b")


def test_redis_close_wakes_a_blocked_claim(redis_queues: RedisQueues) -> None:
    queue = redis_queues("worker-a")
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(queue.claim(1, 30.0)))
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    queue.close()
    thread.join(5)
    assert not thread.is_alive()
    assert result == [[]]
    assert time.monotonic() - started < 2.0


def test_redis_survives_losing_its_streams(redis_queues: RedisQueues, redis_url: str) -> None:
    queue = redis_queues("worker-a")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.delete(*queue.streams)  # e.g. a Redis restarted without persistence
    finally:
        client.close()
    queue.submit(job("a"))
    assert [j.id for j in queue.claim(1, 1.0)] == ["a"]
    queue.complete("a", OK)


def test_redis_errors_are_storage_errors(redis_queues: RedisQueues, redis_url: str) -> None:
    queue = redis_queues("worker-a")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.set(f"{queue.prefix}req:broken", "not a hash")
    finally:
        client.close()
    with pytest.raises(StorageError):
        queue.view("broken")
    with pytest.raises(StorageError):
        queue.is_cancelled("broken")
