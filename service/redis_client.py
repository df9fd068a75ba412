"""One way to connect to Redis for the queue and the store, and one translation of its errors.

Connections time out instead of hanging, idle ones are checked before use, and a command that
meets a dropped connection is retried a few times (a restarting Redis). What still fails becomes
:class:`~core.errors.QueueUnavailable` (unreachable: transient, 503) or
:class:`~core.errors.StorageError` (anything else), never a ``redis`` exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core.errors import QueueUnavailable, StorageError

CONNECT_TIMEOUT = 2.0
#: A reply must come within this long; claims block on Redis for less (their claim timeout).
SOCKET_TIMEOUT = 10.0
HEALTH_CHECK_SECONDS = 10
RETRIES = 3


def connect(url: str, *, decode_responses: bool) -> redis.Redis:
    """A client for ``url`` with timeouts, health checks and retries (see the module)."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=HEALTH_CHECK_SECONDS,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Redis failures as our errors: unreachable → ``QueueUnavailable``, else ``StorageError``."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise QueueUnavailable(f"redis unreachable: {what} failed: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise StorageError(f"redis: {what} failed: {exc}") from exc
