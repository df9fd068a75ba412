"""Logging setup: readable text or one JSON object per line, each carrying the request id.

The request id travels in a context variable. The HTTP layer binds one per request (the job's id
once a route answers with ``x-fal-request-id``); the worker binds the job id while it works on a
job (a batch binds its ids, comma-separated). A filter on our handler copies it onto every
record, so any logger, ours or a library's, gets it without passing it around.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

__all__ = [
    "JsonFormatter",
    "RequestIdFilter",
    "TextFormatter",
    "adopt_request_id",
    "current_request_id",
    "request_context",
    "setup_logging",
]


class _RequestContext:
    """Mutable on purpose: a task started inside the request (a streaming response) shares it."""

    __slots__ = ("request_id",)

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id


_current: ContextVar[_RequestContext | None] = ContextVar("flux2_request", default=None)


def current_request_id() -> str | None:
    """The request id bound in this context, None outside a request or job."""
    context = _current.get()
    return context.request_id if context is not None else None


@contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Bind ``request_id`` to the log records made inside the block (this thread or task)."""
    token = _current.set(_RequestContext(request_id))
    try:
        yield
    finally:
        _current.reset(token)


def adopt_request_id(request_id: str) -> None:
    """Replace the id bound by the enclosing :func:`request_context` (the job id became known).

    Outside a context it does nothing.
    """
    context = _current.get()
    if context is not None:
        context.request_id = request_id


_MARK = "_flux2_handler"  # set on the handler setup_logging installs, so a second call replaces it

# LogRecord attributes that are not "extra" fields (plus the ones formatters add).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "context",
}


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` from the context unless the call gave one in ``extra``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields = record.__dict__.items()
    return {k: v for k, v in fields if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, ``request_id`` (when
    known), the call's ``extra`` fields, and ``exc_info`` as text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-01-01 12:00:00,000 INFO service.worker [<request id>]: message key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.context = f" [{request_id}]" if request_id else ""
        text = super().format(record)
        extras = _extras(record)
        if extras:
            first, newline, rest = text.partition("\n")
            pairs = " ".join(f"{k}={v}" for k, v in extras.items())
            text = f"{first} {pairs}{newline}{rest}"
        return text


def setup_logging(
    level: int | str = logging.INFO, json: bool = False, *, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as text or JSON lines, at ``level``.

    Replaces the handler an earlier call installed (others, such as pytest's, stay). Returns the
    new handler.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RequestIdFilter())
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


def _iso_time(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
