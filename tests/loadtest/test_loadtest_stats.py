"""Percentiles and run summaries computed from known samples (service/loadtest/stats.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from loadtest_helpers import sample

from service.loadtest.sample import Outcome, Phase
from service.loadtest.stats import distribution, percentile, summarize


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50, 5.5),  # even count: mean of the two middle ones
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9.1),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95, 9.55),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99, 9.91),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 100, 10),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0, 1),
        ([10, 1, 7, 3, 5], 50, 5),  # unsorted input, odd count: the middle one
        ([10, 1, 7, 3, 5], 90, 8.8),  # between 7 (rank 3) and 10 (rank 4): 7 + 0.6 * 3
        ([2.5], 99, 2.5),
        ([0.2, 0.4], 25, 0.25),
    ],
)
def test_percentile_of_known_samples(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_matches_numpy_linear() -> None:
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 101, 1000):
        values = [rng.lognormvariate(0, 1) for _ in range(n)]
        for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
            assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_distribution_of_one_to_a_hundred() -> None:
    stats = distribution([float(v) for v in range(1, 101)])
    assert stats == pytest.approx(
        {
            "n": 100,
            "mean": 50.5,
            "min": 1,
            "p50": 50.5,
            "p90": 90.1,
            "p95": 95.05,
            "p99": 99.01,
            "max": 100,
        }
    )
    assert distribution([]) == {
        "n": 0,
        "mean": None,
        "min": None,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
        "max": None,
    }


def test_summary_counts_rates_and_excludes_the_warmup() -> None:
    samples = [
        sample(0, 1.0, start=0.0, server_timings={"inference": 0.5}, queue_s=0.1),
        sample(1, 2.0, start=1.0, server_timings={"inference": 0.7}, queue_s=0.3),
        sample(2, 3.0, start=2.0, images=4, retries=2),
        sample(3, 4.0, start=3.0),
        sample(4, 0.2, outcome=Outcome.ERROR, error_type="http_422:image_load_error"),
        sample(5, 0.3, outcome=Outcome.ERROR, error_type="http_404", retries=1),
        sample(6, 0.3, outcome=Outcome.ERROR, error_type="http_404"),
        sample(7, None, outcome=Outcome.DROPPED, error_type="dropped"),
        sample(8, None, outcome=Outcome.UNFINISHED, error_type="interrupted"),
        # the warm-up: slow, failed and retried, and none of it may count
        sample(0, 100.0, phase=Phase.WARMUP, retries=5),
        sample(1, 1.0, phase=Phase.WARMUP, outcome=Outcome.ERROR, error_type="warm"),
    ]
    summary = summarize(samples, window_s=10.0)
    assert summary["requests"] == 9
    assert (summary["ok"], summary["errors"]) == (4, 3)
    assert (summary["dropped"], summary["unfinished"]) == (1, 1)
    assert summary["error_rate"] == pytest.approx(3 / 7)
    assert summary["errors_by_type"] == {"http_404": 2, "http_422:image_load_error": 1}
    assert (summary["retries"], summary["requests_retried"]) == (3, 2)
    assert summary["requests_per_s"] == pytest.approx(0.4)
    assert summary["images"] == 7
    assert summary["images_per_s"] == pytest.approx(0.7)
    latency = summary["latency_s"]
    assert latency["n"] == 4
    assert (latency["p50"], latency["p90"], latency["max"]) == pytest.approx((2.5, 3.7, 4.0))
    assert summary["queue_s"]["n"] == 2
    assert summary["queue_s"]["p50"] == pytest.approx(0.2)
    assert summary["server_timings_s"]["inference"]["mean"] == pytest.approx(0.6)


def test_summary_counts_late_open_loop_arrivals() -> None:
    samples = [
        sample(0, 1.0, start=1.00, scheduled_s=1.0),  # on time
        sample(1, 1.0, start=2.04, scheduled_s=2.0),  # 40 ms: not late
        sample(2, 1.0, start=3.20, scheduled_s=3.0),  # 200 ms: late
        sample(3, None, outcome=Outcome.DROPPED, start=9.0, scheduled_s=4.0),  # dropped, not late
    ]
    summary = summarize(samples, window_s=5.0)
    assert summary["late"] == 1
    assert summary["start_lag_s"]["max"] == pytest.approx(0.2)


def test_summary_of_nothing_answered() -> None:
    summary = summarize([sample(0, None, outcome=Outcome.UNFINISHED)], window_s=0.0)
    assert summary["error_rate"] is None
    assert summary["requests_per_s"] is None
    assert summary["latency_s"]["p50"] is None
