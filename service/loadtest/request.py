"""One request through the official fal-client, timed, as a :class:`Sample`.

Sync mode is ``SyncClient.run`` (one POST; the answer is the output). Queue mode is
``SyncClient.subscribe`` with ``on_enqueue`` and ``on_queue_update``: fal-client submits, polls
the status (``IN_QUEUE`` → ``IN_PROGRESS`` → ``COMPLETED``, every ``poll_interval`` seconds) and
fetches the result, exactly as users' code does; the load test times those status events.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from service.loadtest.mixes import RequestSpec
from service.loadtest.sample import Outcome, Phase, Sample
from service.loadtest.target import RetryCounter

ERROR_TEXT_LIMIT = 300


class Mode(StrEnum):
    SYNC = "sync"
    QUEUE = "queue"


@dataclass
class Ticket:
    """A request on its way: the runner hands it out; the sender fills in ``request_id`` as soon
    as the queue answers, so an unfinished request can still be cancelled."""

    index: int
    phase: Phase
    spec: RequestSpec
    scheduled: float | None = None  # monotonic time it was due (open loop)
    started: float = field(default_factory=time.monotonic)
    request_id: str | None = None


Sender = Callable[[Ticket], Sample]


class FalSender:
    """Sends tickets with one shared ``fal_client.SyncClient`` (thread-safe, pooled connections).

    Times in the samples are ``time.monotonic()`` values; the runner rebases them to its start.
    """

    def __init__(self, client: Any, mode: Mode, *, poll_interval: float = 0.1) -> None:
        self._client = client
        self._mode = mode
        self._poll_interval = poll_interval

    def __call__(self, ticket: Ticket) -> Sample:
        spec = ticket.spec
        events: dict[str, float] = {}
        metrics: dict[str, Any] = {}

        def on_enqueue(request_id: str) -> None:
            ticket.request_id = request_id
            events.setdefault("enqueued", time.monotonic())

        def on_update(status: Any) -> None:
            name = type(status).__name__  # Queued, InProgress, Completed
            events.setdefault(name, time.monotonic())
            if name == "Completed" and isinstance(status.metrics, dict):
                metrics.update(status.metrics)

        request_bytes = len(json.dumps(spec.arguments, separators=(",", ":")))
        with RetryCounter.track() as retries:
            ticket.started = start = time.monotonic()
            try:
                if self._mode is Mode.SYNC:
                    output = self._client.run(spec.endpoint, dict(spec.arguments))
                else:
                    output = self._client.subscribe(
                        spec.endpoint,
                        dict(spec.arguments),
                        on_enqueue=on_enqueue,
                        on_queue_update=on_update,
                        interval=self._poll_interval,
                    )
                error: BaseException | None = None
            except Exception as exc:  # every failure is a sample, never a crash
                output, error = None, exc
            end = time.monotonic()
        common: dict[str, Any] = {
            "index": ticket.index,
            "phase": ticket.phase,
            "mix": spec.mix,
            "endpoint": spec.endpoint,
            "start_s": start,
            "end_s": end,
            "scheduled_s": ticket.scheduled,
            "latency_s": end - start,
            "request_id": ticket.request_id,
            "request_bytes": request_bytes,
            "retries": retries.count,
            "server_metrics": metrics,
            **_queue_times(start, events),
        }
        if error is not None:
            error_type, message = classify_error(error)
            return Sample(outcome=Outcome.ERROR, error_type=error_type, error=message, **common)
        return Sample(outcome=Outcome.OK, **common, **_output_fields(output))

    def cancel(self, ticket: Ticket) -> None:
        """Best effort: cancel a queued request that the load test gave up on."""
        if self._mode is Mode.QUEUE and ticket.request_id is not None:
            # already finished, or the server is gone: nothing to undo then
            with contextlib.suppress(Exception):
                self._client.cancel(ticket.spec.endpoint, ticket.request_id)


def _queue_times(start: float, events: Mapping[str, float]) -> dict[str, float | None]:
    enqueued = events.get("enqueued")
    if enqueued is None:
        return {}
    running = min((events[k] for k in ("InProgress", "Completed") if k in events), default=None)
    completed = events.get("Completed")
    return {
        "submit_s": enqueued - start,
        "queue_s": None if running is None else running - enqueued,
        "run_s": None if running is None or completed is None else completed - running,
    }


def _output_fields(output: Any) -> dict[str, Any]:
    if not isinstance(output, dict):
        return {"response_bytes": len(json.dumps(output))}
    images = output.get("images")
    images = images if isinstance(images, list) else []
    timings = output.get("timings")
    return {
        "images": len(images),
        "image_bytes": sum(
            image["file_size"]
            for image in images
            if isinstance(image, dict) and isinstance(image.get("file_size"), int)
        ),
        "response_bytes": len(json.dumps(output, separators=(",", ":"))),
        "server_timings": {
            str(k): float(v)
            for k, v in (timings.items() if isinstance(timings, dict) else ())
            if isinstance(v, int | float) and math.isfinite(v)
        },
    }


def classify_error(error: BaseException) -> tuple[str, str]:
    """A short, stable error type and a message, e.g. ``("http_422:image_load_error", ...)``.

    HTTP errors are ``http_<status>`` plus fal's ``error_type`` (or the ``type`` of the first
    422 detail) when the server gave one; client-side failures are ``timeout``,
    ``connection_error`` or the exception's class name.
    """
    import httpx

    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        kind = getattr(error, "error_type", None) or _detail_type(getattr(error, "message", None))
        name = f"http_{status}" + (f":{kind}" if kind else "")
    elif isinstance(error, httpx.TimeoutException | TimeoutError):
        name = "timeout"
    elif isinstance(error, httpx.TransportError):
        name = "connection_error"
    else:
        name = type(error).__name__
    message = str(getattr(error, "message", None) or error) or type(error).__name__
    return name, message[:ERROR_TEXT_LIMIT]


def _detail_type(detail: Any) -> str | None:
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        kind = detail[0].get("type")
        return kind if isinstance(kind, str) else None
    return None
