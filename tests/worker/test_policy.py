"""The scheduling rules (service/worker/policy.py), with a fake clock: no threads, no sleeps."""

from __future__ import annotations

import pytest

from service.worker.policy import BatchPolicy, split_by_key

POLICY = BatchPolicy(
    max_batch_images=4,
    batch_window=0.05,
    gather_poll=0.01,
    straggler_grace=0.25,
    straggler_factor=4,
)


# -- gathering ---------------------------------------------------------------------------------


def test_an_idle_gpu_waits_for_the_rest_of_the_window_only() -> None:
    gathering = POLICY.gathering(now=100.0, images=1)
    assert gathering.next_wait(100.0, gpu_idle=True) == pytest.approx(0.05)
    assert gathering.next_wait(100.03, gpu_idle=True) == pytest.approx(0.02)
    assert gathering.next_wait(100.05, gpu_idle=True) is None  # the window is over: go
    assert gathering.next_wait(107.0, gpu_idle=True) is None


def test_a_busy_gpu_keeps_gathering_past_the_window() -> None:
    gathering = POLICY.gathering(now=100.0, images=1)
    assert gathering.next_wait(105.0, gpu_idle=False) == POLICY.gather_poll
    assert gathering.next_wait(105.0, gpu_idle=True) is None  # ... until it is free


def test_gathering_stops_when_the_batch_is_full() -> None:
    gathering = POLICY.gathering(now=100.0, images=3)
    assert gathering.admits(1)
    assert not gathering.admits(2)  # would make 5 images: first in line for the next batch
    gathering.add(1)
    assert gathering.next_wait(100.0, gpu_idle=False) is None


def test_a_zero_window_sends_an_idle_gpus_batch_at_once() -> None:
    gathering = BatchPolicy(batch_window=0.0).gathering(now=5.0, images=1)
    assert gathering.next_wait(5.0, gpu_idle=True) is None
    assert gathering.next_wait(5.0, gpu_idle=False) == BatchPolicy().gather_poll


# -- stragglers ----------------------------------------------------------------------------------


def test_nothing_is_left_behind_before_a_first_job_is_ready() -> None:
    watch = POLICY.stragglers(now=0.0)
    assert not watch.leave_pending(60.0, done=0, pending=2, gpu_idle=True)
    assert watch.grace is None


def test_stragglers_get_the_grace_or_four_times_the_first_jobs_time() -> None:
    fast = POLICY.stragglers(now=0.0)
    assert not fast.leave_pending(0.01, done=1, pending=1, gpu_idle=True)
    assert fast.grace == pytest.approx(0.25)  # the floor: the first job took 10 ms
    assert not fast.leave_pending(0.2, done=1, pending=1, gpu_idle=True)
    assert fast.leave_pending(0.25, done=1, pending=1, gpu_idle=True)

    slow = POLICY.stragglers(now=0.0)
    assert not slow.leave_pending(0.5, done=1, pending=1, gpu_idle=True)
    assert slow.grace == pytest.approx(2.0)  # a busy CPU slows every job alike
    assert not slow.leave_pending(1.9, done=1, pending=1, gpu_idle=True)
    assert slow.leave_pending(2.0, done=1, pending=1, gpu_idle=True)


def test_stragglers_are_waited_for_while_the_gpu_is_busy() -> None:
    watch = POLICY.stragglers(now=0.0)
    watch.leave_pending(0.01, done=1, pending=1, gpu_idle=False)
    assert not watch.leave_pending(30.0, done=1, pending=1, gpu_idle=False)
    assert watch.leave_pending(30.0, done=1, pending=1, gpu_idle=True)


def test_nothing_to_leave_when_every_job_is_ready() -> None:
    watch = POLICY.stragglers(now=0.0)
    assert not watch.leave_pending(99.0, done=3, pending=0, gpu_idle=True)


# -- prefetch ----------------------------------------------------------------------------------


def test_without_a_prefetch_limit_a_busy_worker_claims_at_any_step() -> None:
    policy = BatchPolicy(prefetch_steps=None)
    assert policy.claims_while_busy
    assert all(policy.may_prefetch(left) for left in range(0, 50))


def test_with_a_prefetch_limit_a_busy_worker_claims_only_in_its_last_steps() -> None:
    policy = BatchPolicy(prefetch_steps=2)
    assert not policy.claims_while_busy
    assert [left for left in range(8, -1, -1) if policy.may_prefetch(left)] == [2, 1, 0]


# -- grouping ----------------------------------------------------------------------------------


def test_the_batch_is_the_oldest_jobs_group_in_order() -> None:
    jobs = [("a", 512), ("b", 1024), ("c", 512), ("d", 768), ("e", 512)]
    group, others = split_by_key(jobs, key=lambda job: job[1])
    assert [job for job, _ in group] == ["a", "c", "e"]
    assert [job for job, _ in others] == ["b", "d"]


def test_grouping_nothing() -> None:
    assert split_by_key([], key=lambda job: job) == ([], [])
