"""The live display while a load test runs: one status line on stderr.

On a terminal the line is rewritten in place every half second; otherwise (a log file, CI) a
new line is printed every ``every_s`` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from service.loadtest.runner import Snapshot
from service.loadtest.stats import percentile


def status_line(snapshot: Snapshot) -> str:
    latencies = snapshot.ok_latencies
    elapsed = max(snapshot.elapsed_s, 1e-9)
    parts = [
        f"{snapshot.phase.value:>8} {snapshot.finished}/{snapshot.planned}",
        f"in flight {snapshot.in_flight}",
        f"ok {len(latencies)}",
        f"errors {snapshot.errors}",
    ]
    if snapshot.dropped:
        parts.append(f"dropped {snapshot.dropped}")
    if snapshot.retries:
        parts.append(f"retries {snapshot.retries}")
    if latencies:
        parts.append(f"p50 {percentile(latencies, 50):.2f} s p95 {percentile(latencies, 95):.2f} s")
    parts.append(f"{len(latencies) / elapsed:.2f} req/s")
    parts.append(f"{snapshot.elapsed_s:.0f} s")
    return " | ".join(parts)


class Display:
    """Callable the runner feeds with snapshots."""

    def __init__(self, stream: TextIO | None = None, *, every_s: float = 5.0) -> None:
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._every_s = every_s
        self._last = 0.0
        self._width = 0

    def __call__(self, snapshot: Snapshot) -> None:
        line = status_line(snapshot)
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif time.monotonic() - self._last >= self._every_s:
            self._stream.write(line + "\n")
            self._last = time.monotonic()
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
