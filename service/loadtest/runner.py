"""The load: warm-up, then a closed or an open loop, bounded by construction.

* **Closed loop** (``--concurrency N``): N workers, each sending its next request when the
  previous one completes; the server's speed sets the rate.
* **Open loop** (``--rate R``): requests arrive R per second on average whatever the server
  does: Poisson arrivals (exponential gaps, seeded; ``--arrival poisson``, the default) or evenly
  spaced ones (``--arrival uniform``). At most ``--concurrency`` are in flight; an arrival that
  finds them all busy is *dropped* (recorded, never sent), and one sent more than
  :data:`LATE_AFTER_S` after it was due counts as *late*. Each request runs on its own thread.

Both stop at ``--requests`` or ``--duration``, whichever comes first; requests still running
then get ``--drain-timeout`` seconds and are recorded as unfinished (and cancelled, in queue
mode) after that. Ctrl-C stops at once: the in-flight requests are recorded as unfinished and
the samples so far are returned. The caps of :mod:`~service.loadtest.plan` always hold.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from service.loadtest.mixes import RequestSource
from service.loadtest.plan import Arrival, Loop, Plan
from service.loadtest.request import Sender, Ticket
from service.loadtest.sample import Outcome, Phase, Sample

CANCEL_WAIT_S = 2.0  # how long cancelling abandoned requests may hold up the end


@dataclass(frozen=True)
class Snapshot:
    """What the live display shows."""

    phase: Phase
    planned: int
    finished: int
    in_flight: int
    ok_latencies: list[float]
    errors: int
    dropped: int
    retries: int
    elapsed_s: float


@dataclass(frozen=True)
class RunResult:
    samples: list[Sample]  # times rebased to the start of the run
    measured_start_s: float
    measured_end_s: float
    stop_reason: str  # requests, duration or interrupted
    interrupted: bool


class Runner:
    """Runs ``plan`` with ``send`` (one request → one sample) over the requests of ``source``."""

    def __init__(
        self,
        plan: Plan,
        source: RequestSource,
        send: Sender,
        *,
        cancel: Callable[[Ticket], None] | None = None,
        progress: Callable[[Snapshot], None] | None = None,
        tick_s: float = 0.5,
    ) -> None:
        self.plan, self._source, self._send = plan, source, send
        self._cancel, self._progress, self._tick_s = cancel, progress, tick_s
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._samples: list[Sample] = []
        self._in_flight: dict[tuple[Phase, int], Ticket] = {}
        self._abandoned: set[tuple[Phase, int]] = set()
        self._phase, self._planned = Phase.WARMUP, 0
        self._t0 = self._measured_t0 = time.monotonic()
        self._reason = "requests"

    def run(self) -> RunResult:
        plan = self.plan
        self._t0 = time.monotonic()
        deadline = self._t0 + plan.max_duration_s
        interrupted = False
        try:
            if plan.warmup:
                self._closed(
                    Phase.WARMUP, plan.warmup, min(plan.concurrency, plan.warmup), deadline
                )
            self._measured_t0 = time.monotonic()
            deadline = self._measured_t0 + plan.max_duration_s
            if plan.loop is Loop.CLOSED:
                self._closed(Phase.MEASURED, plan.max_requests, plan.concurrency, deadline)
            else:
                self._open(plan.max_requests, deadline)
        except KeyboardInterrupt:
            interrupted, self._reason = True, "interrupted"
        finally:
            self._stop.set()
            self._abandon("interrupted" if interrupted else "unfinished")
        with self._lock:
            samples = sorted(self._samples, key=lambda s: (s.phase != Phase.WARMUP, s.start_s))
        ends = [s.end_s for s in samples if s.measured and s.end_s is not None]
        measured_start = self._measured_t0 - self._t0
        return RunResult(
            samples=samples,
            measured_start_s=measured_start,
            measured_end_s=max(ends, default=time.monotonic() - self._t0),
            stop_reason=self._reason,
            interrupted=interrupted,
        )

    # -- the two loops ---------------------------------------------------------------------

    def _closed(self, phase: Phase, count: int, workers: int, deadline: float) -> None:
        self._begin(phase, count)
        indexes = itertools.count()
        over = threading.Event()

        def work() -> None:
            while not (self._stop.is_set() or over.is_set()):
                with self._lock:
                    index = next(indexes)
                if index >= count:
                    over.set()
                    return
                if time.monotonic() >= deadline:
                    self._reason = "duration"
                    over.set()
                    return
                spec = self._source.spec(index, warmup=phase is Phase.WARMUP)
                self._execute(self._register(Ticket(index, phase, spec)))

        threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        self._wait(lambda: not any(t.is_alive() for t in threads), over, deadline)

    def _open(self, count: int, deadline: float) -> None:
        self._begin(Phase.MEASURED, count)
        start, over = time.monotonic(), threading.Event()
        gaps = self._gaps()

        def dispatch() -> None:
            due = start
            for index in range(count):
                due += next(gaps)
                if due >= deadline:
                    self._reason = "duration"
                    break
                spec = self._source.spec(index)  # before the wait: it is not free
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                ticket = Ticket(index, Phase.MEASURED, spec, scheduled=due)
                with self._lock:
                    full = len(self._in_flight) >= self.plan.concurrency
                if full:
                    self._record(self._dropped(ticket))
                else:
                    self._register(ticket)
                    threading.Thread(target=self._execute, args=(ticket,), daemon=True).start()
            over.set()

        dispatcher = threading.Thread(target=dispatch, daemon=True)
        dispatcher.start()
        self._wait(lambda: not dispatcher.is_alive() and not self._in_flight, over, deadline)

    def _gaps(self) -> Iterator[float]:
        rate = self.plan.rate or 1.0
        rng = random.Random(f"arrivals:{self.plan.seed}")
        yield 0.0  # the first request arrives at once
        while True:
            yield rng.expovariate(rate) if self.plan.arrival is Arrival.POISSON else 1 / rate

    # -- bookkeeping ----------------------------------------------------------------------

    def _begin(self, phase: Phase, count: int) -> None:
        with self._lock:
            self._phase, self._planned = phase, count

    def _register(self, ticket: Ticket) -> Ticket:
        with self._lock:
            self._in_flight[(ticket.phase, ticket.index)] = ticket
        return ticket

    def _execute(self, ticket: Ticket) -> None:
        sample = self._send(ticket)
        key = (ticket.phase, ticket.index)
        with self._lock:
            self._in_flight.pop(key, None)
            if key in self._abandoned:
                return  # already recorded as unfinished
        self._record(sample)

    def _record(self, sample: Sample) -> None:
        t0 = self._t0
        rebased = replace(
            sample,
            start_s=sample.start_s - t0,
            end_s=None if sample.end_s is None else sample.end_s - t0,
            scheduled_s=None if sample.scheduled_s is None else sample.scheduled_s - t0,
        )
        with self._lock:
            self._samples.append(rebased)
        self._changed.set()

    def _dropped(self, ticket: Ticket) -> Sample:
        spec = ticket.spec
        return Sample(
            index=ticket.index,
            phase=ticket.phase,
            outcome=Outcome.DROPPED,
            mix=spec.mix,
            endpoint=spec.endpoint,
            start_s=time.monotonic(),
            scheduled_s=ticket.scheduled,
            error_type="dropped",
            error=f"{self.plan.concurrency} requests already in flight",
        )

    def _abandon(self, why: str) -> None:
        """Record what is still in flight as unfinished; cancel it (queue mode), briefly."""
        with self._lock:
            left = list(self._in_flight.values())
            self._abandoned.update(self._in_flight)
            self._in_flight.clear()
        for ticket in left:
            spec = ticket.spec
            self._record(
                Sample(
                    index=ticket.index,
                    phase=ticket.phase,
                    outcome=Outcome.UNFINISHED,
                    mix=spec.mix,
                    endpoint=spec.endpoint,
                    start_s=ticket.started,
                    scheduled_s=ticket.scheduled,
                    request_id=ticket.request_id,
                    error_type=why,
                    error=f"{why} after {time.monotonic() - ticket.started:.1f} s",
                )
            )
        if self._cancel is not None and left:
            cancels = [threading.Thread(target=self._cancel, args=(t,), daemon=True) for t in left]
            for thread in cancels:
                thread.start()
            until = time.monotonic() + CANCEL_WAIT_S
            for thread in cancels:
                thread.join(max(0.0, until - time.monotonic()))

    def _wait(self, done: Callable[[], bool], over: threading.Event, deadline: float) -> None:
        """Show progress until ``done()``; after ``over`` or ``deadline``, drain for a while."""
        drain_until: float | None = None
        next_tick = time.monotonic()
        while not done():
            now = time.monotonic()
            if drain_until is None and (over.is_set() or now >= deadline):
                if now >= deadline and not over.is_set():
                    self._reason = "duration"
                over.set()
                drain_until = now + self.plan.drain_timeout_s
            if drain_until is not None and now >= drain_until:
                break
            if now >= next_tick:
                self._show()
                next_tick = now + self._tick_s
            self._changed.wait(0.05)
            self._changed.clear()
        self._abandon("unfinished")
        self._show()

    def _show(self) -> None:
        if self._progress is None:
            return
        with self._lock:
            phase = [s for s in self._samples if s.phase is self._phase]
            snapshot = Snapshot(
                phase=self._phase,
                planned=self._planned,
                finished=len(phase),
                in_flight=len(self._in_flight),
                ok_latencies=[
                    s.latency_s
                    for s in phase
                    if s.latency_s is not None and s.outcome is Outcome.OK
                ],
                errors=sum(s.outcome is Outcome.ERROR for s in phase),
                dropped=sum(s.outcome is Outcome.DROPPED for s in phase),
                retries=sum(s.retries for s in phase),
                elapsed_s=time.monotonic()
                - (self._t0 if self._phase is Phase.WARMUP else self._measured_t0),
            )
        self._progress(snapshot)
