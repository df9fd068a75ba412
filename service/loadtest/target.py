"""Where the load goes, and how the official ``fal-client`` is pointed there.

fal-client 1.0.3 builds every URL from two module globals of ``fal_client.client``, read at
call time: ``RUN_URL_FORMAT`` (``https://fal.run/``, sync runs) and ``QUEUE_URL_FORMAT``
(``https://queue.fal.run/``, queue submits). Queue status, result and cancel then follow the
URLs the submit's answer carries. :func:`pointed_at` sets those two globals for the duration of
a run, to fal's own hosts for the hosted service or to ``<url>/`` and ``<url>/queue/`` for a
self-hosted server, http or https. Nothing else differs between the two targets: the same
``SyncClient``, the same calls. (``FAL_RUN_HOST`` alone cannot do this: it is read once at
import and the scheme is always https; see docs/reference/fal-protocol.md §9.1.)

fal-client retries some failures by itself (up to 10 attempts: transport errors, 408, 409, 429,
ingress 5xx) and logs each retry at debug level on the ``fal_client.client`` logger.
:class:`RetryCounter` counts those log records per request, so retries are shown, never silent.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.errors import ConfigError

HOSTED_RUN_URL = "https://fal.run/"
HOSTED_QUEUE_URL = "https://queue.fal.run/"
HOSTED_NAMES = frozenset({"fal", "hosted", "https://fal.run", "https://fal.run/"})
INSTALL_HINT = "the load test needs the official fal client: pip install 'flux2-edit[loadtest]'"
#: Sent as ``Authorization: Key ...`` to a self-hosted server when FAL_KEY is not set (a server
#: without FLUX2_API_KEYS accepts any key; fal-client refuses to send a request without one).
ANONYMOUS_KEY = "flux2-edit-loadtest"


@dataclass(frozen=True)
class Target:
    """An endpoint's base URLs, as fal-client's ``RUN_URL_FORMAT`` and ``QUEUE_URL_FORMAT``."""

    url: str  # what the user gave, for the report
    run_url: str
    queue_url: str
    hosted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "run_url": self.run_url,
            "queue_url": self.queue_url,
            "hosted": self.hosted,
        }


def parse_target(text: str) -> Target:
    """``fal`` (fal's hosted service) or a base URL such as ``http://127.0.0.1:8000``."""
    if text.strip().lower() in HOSTED_NAMES:
        return Target(text, HOSTED_RUN_URL, HOSTED_QUEUE_URL, hosted=True)
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ConfigError(f"--target {text!r}: use 'fal' or a base URL like http://127.0.0.1:8000")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return Target(text, f"{base}/", f"{base}/queue/", hosted=False)


def fal_key(target: Target) -> str | None:
    """The key to send: ``FAL_KEY``; for a self-hosted server without one, a placeholder; for the
    hosted service without one, None (fal-client then finds its own credentials, if any)."""
    key = os.environ.get("FAL_KEY")
    if key:
        return key
    return None if target.hosted else ANONYMOUS_KEY


def import_fal_client() -> Any:
    """``fal_client``, or a :class:`ConfigError` saying how to install it."""
    try:
        import fal_client
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return fal_client


@contextmanager
def pointed_at(target: Target) -> Iterator[None]:
    """Send fal-client's runs and submits to ``target`` until the block ends."""
    client_module = import_fal_client().client
    saved = client_module.RUN_URL_FORMAT, client_module.QUEUE_URL_FORMAT
    client_module.RUN_URL_FORMAT = target.run_url
    client_module.QUEUE_URL_FORMAT = target.queue_url
    try:
        yield
    finally:
        client_module.RUN_URL_FORMAT, client_module.QUEUE_URL_FORMAT = saved


class RequestRetries:
    """The retry count of one request (set as the current one by :meth:`RetryCounter.track`)."""

    def __init__(self) -> None:
        self.count = 0


_current: contextvars.ContextVar[RequestRetries | None] = contextvars.ContextVar(
    "loadtest_retries", default=None
)


class RetryCounter(logging.Filter):
    """Counts fal-client's "Retrying request to ..." records for the request being tracked in
    the current thread; its other debug records are dropped so they do not flood stderr."""

    LOGGER = "fal_client.client"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Retrying request"):
            retries = _current.get()
            if retries is not None:
                retries.count += 1
        return record.levelno > logging.DEBUG

    @contextmanager
    def installed(self) -> Iterator[RetryCounter]:
        """Attach to fal-client's logger (at debug level, where it logs retries) for a run."""
        logger = logging.getLogger(self.LOGGER)
        level = logger.level
        logger.addFilter(self)
        logger.setLevel(logging.DEBUG)
        try:
            yield self
        finally:
            logger.removeFilter(self)
            logger.setLevel(level)

    @staticmethod
    @contextmanager
    def track() -> Iterator[RequestRetries]:
        """Count the retries made in this thread (or task) until the block ends."""
        retries = RequestRetries()
        token = _current.set(retries)
        try:
            yield retries
        finally:
            _current.reset(token)
