"""The loops, the caps and the stops, with a fake sender (service/loadtest/runner.py, plan.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from service.loadtest.mixes import MIXES, RequestSource
from service.loadtest.plan import MAX_CONCURRENCY, MAX_REQUESTS, Arrival, Loop, Plan
from service.loadtest.request import Ticket
from service.loadtest.runner import Runner, Snapshot
from service.loadtest.sample import Outcome, Phase, Sample


class FakeSender:
    """Takes ``seconds`` per request (or blocks until ``gate`` opens); tracks concurrency."""

    def __init__(self, seconds: float = 0.0, gate: threading.Event | None = None) -> None:
        self.seconds, self.gate = seconds, gate
        self.lock = threading.Lock()
        self.active = self.peak = 0
        self.tickets: list[Ticket] = []
        self.cancelled: list[Ticket] = []

    def __call__(self, ticket: Ticket) -> Sample:
        start = time.monotonic()
        with self.lock:
            self.tickets.append(ticket)
            self.active += 1
            self.peak = max(self.peak, self.active)
        ticket.request_id = f"r-{ticket.phase}-{ticket.index}"
        if self.gate is not None:
            self.gate.wait(10)
        else:
            time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        end = time.monotonic()
        return Sample(
            index=ticket.index,
            phase=ticket.phase,
            outcome=Outcome.OK,
            mix=ticket.spec.mix,
            endpoint=ticket.spec.endpoint,
            start_s=start,
            end_s=end,
            scheduled_s=ticket.scheduled,
            latency_s=end - start,
            images=1,
        )

    def cancel(self, ticket: Ticket) -> None:
        self.cancelled.append(ticket)


SOURCE = RequestSource(mixes=[(MIXES["t2i"], 1.0)])  # no references to draw: fast


def _measured(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.phase is Phase.MEASURED]


def test_closed_loop_sends_every_request_once_with_n_workers() -> None:
    sender = FakeSender(seconds=0.02)
    plan = Plan(loop=Loop.CLOSED, concurrency=3, requests=12, warmup=2)
    result = Runner(plan, SOURCE, sender).run()
    measured = _measured(result.samples)
    assert sorted(s.index for s in measured) == list(range(12))
    assert sorted(s.index for s in result.samples if s.phase is Phase.WARMUP) == [0, 1]
    assert all(s.outcome is Outcome.OK for s in result.samples)
    assert sender.peak == 3
    assert result.stop_reason == "requests" and not result.interrupted
    # the warm-up ran before the measured phase, and the times are from the run's start
    assert min(s.start_s for s in measured) >= result.measured_start_s >= 0
    assert result.measured_end_s == pytest.approx(max(s.end_s or 0 for s in measured))


def test_open_loop_arrives_on_schedule_whatever_the_server_does() -> None:
    sender = FakeSender(seconds=0.15)  # slower than the gaps: requests overlap
    plan = Plan(
        loop=Loop.OPEN, rate=20.0, arrival=Arrival.UNIFORM, concurrency=10, requests=8, warmup=0
    )
    result = Runner(plan, SOURCE, sender).run()
    measured = sorted(_measured(result.samples), key=lambda s: s.index)
    assert [s.index for s in measured] == list(range(8))
    scheduled = [s.scheduled_s or 0.0 for s in measured]
    gaps = [b - a for a, b in zip(scheduled, scheduled[1:], strict=False)]
    assert gaps == pytest.approx([0.05] * 7)  # uniform: 1 / rate, independent of completions
    assert all(s.start_s - (s.scheduled_s or 0.0) < 0.25 for s in measured)
    assert sender.peak >= 2  # did not wait for completions


def test_open_loop_poisson_gaps_are_seeded() -> None:
    def schedule(seed: int) -> list[float]:
        plan = Plan(loop=Loop.OPEN, rate=200.0, concurrency=50, requests=20, warmup=0, seed=seed)
        samples = Runner(plan, SOURCE, FakeSender()).run().samples
        first = min(s.scheduled_s or 0.0 for s in samples)
        return sorted((s.scheduled_s or 0.0) - first for s in samples)

    one, again, other = schedule(1), schedule(1), schedule(2)
    assert one == pytest.approx(again, abs=0.002)
    assert one != pytest.approx(other, abs=0.002)
    assert len(set(round(b - a, 4) for a, b in zip(one, one[1:], strict=False))) > 5


def test_open_loop_drops_arrivals_beyond_the_in_flight_cap() -> None:
    gate = threading.Event()
    sender = FakeSender(gate=gate)
    plan = Plan(
        loop=Loop.OPEN, rate=100.0, arrival=Arrival.UNIFORM, concurrency=2, requests=6, warmup=0
    )
    threading.Timer(1.0, gate.set).start()  # all 6 arrive (in 50 ms) while 2 are held
    result = Runner(plan, SOURCE, sender).run()
    outcomes = Counter(s.outcome for s in result.samples)
    assert outcomes == {Outcome.OK: 2, Outcome.DROPPED: 4}
    assert sender.peak == 2
    assert all(s.error_type == "dropped" for s in result.samples if s.outcome is Outcome.DROPPED)


def test_duration_stops_the_closed_loop() -> None:
    plan = Plan(loop=Loop.CLOSED, concurrency=2, duration_s=0.3, warmup=0)
    started = time.monotonic()
    result = Runner(plan, SOURCE, FakeSender(seconds=0.05)).run()
    assert time.monotonic() - started < 1.5
    assert result.stop_reason == "duration"
    assert 2 <= len(result.samples) < 20
    assert plan.max_requests == MAX_REQUESTS  # only the duration bounds it, and the cap


def test_requests_still_running_after_the_drain_timeout_are_unfinished_and_cancelled() -> None:
    gate = threading.Event()
    sender = FakeSender(gate=gate)
    plan = Plan(
        loop=Loop.CLOSED, concurrency=2, requests=2, warmup=0, drain_timeout_s=0.2, duration_s=0.1
    )
    try:
        result = Runner(plan, SOURCE, sender, cancel=sender.cancel).run()
    finally:
        gate.set()
    assert [s.outcome for s in result.samples] == [Outcome.UNFINISHED] * 2
    assert {s.request_id for s in result.samples} == {"r-measured-0", "r-measured-1"}
    assert sorted(t.index for t in sender.cancelled) == [0, 1]
    time.sleep(0.05)  # the released requests finishing late must not add samples
    assert len(result.samples) == 2


def test_ctrl_c_returns_the_samples_so_far() -> None:
    gate = threading.Event()

    class Interrupting:
        """The live display; raises KeyboardInterrupt (as Ctrl-C does in the main thread)
        once two requests are done and the third is held."""

        def __call__(self, snapshot: Snapshot) -> None:
            if snapshot.phase is Phase.MEASURED and snapshot.finished >= 2:
                raise KeyboardInterrupt

    count = 0

    def send(ticket: Ticket) -> Sample:
        nonlocal count
        count += 1
        if count > 2:
            gate.wait(10)
        return FakeSender()(ticket)

    plan = Plan(loop=Loop.CLOSED, concurrency=1, requests=50, warmup=0)
    try:
        result = Runner(plan, SOURCE, send, progress=Interrupting(), tick_s=0.01).run()
    finally:
        gate.set()
    assert result.interrupted and result.stop_reason == "interrupted"
    assert [s.outcome for s in result.samples] == [Outcome.OK, Outcome.OK, Outcome.UNFINISHED]
    assert result.samples[-1].error_type == "interrupted"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": MAX_CONCURRENCY + 1}, "concurrency"),
        ({"requests": MAX_REQUESTS + 1}, "requests"),
        ({"duration_s": 7200.0}, "duration"),
        ({"warmup": -1}, "warmup"),
        ({"loop": Loop.OPEN}, "needs a rate"),
        ({"rate": 2.0}, "needs a rate"),
        ({"loop": Loop.OPEN, "rate": 1000.0}, "rate"),
    ],
)
def test_plan_caps_hold(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Plan(**options)  # type: ignore[arg-type]


def test_plan_defaults_are_bounded() -> None:
    assert (Plan().max_requests, Plan().max_duration_s) == (20, 3600.0)
    assert Plan(requests=5).max_duration_s == 3600.0
