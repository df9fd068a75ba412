"""Webhook delivery: fal's OK/ERROR payloads, POSTed with retries and exponential backoff."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from service.jobs import Outcome

logger = logging.getLogger(__name__)


def webhook_payload(request_id: str, outcome: Outcome) -> dict[str, Any]:
    """The body fal sends to ``fal_webhook`` (fal-protocol.md §11)."""
    payload: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if outcome.ok else "ERROR",
        "payload": outcome.body,
    }
    if not outcome.ok:
        payload["error"] = f"Invalid status code: {outcome.status_code}"
    return payload


class WebhookSender:
    """Delivers webhooks on background threads; a failed delivery is retried, then logged."""

    def __init__(self, *, attempts: int = 6, backoff: float = 2.0, timeout: float = 15.0) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")
        self._stopping = threading.Event()

    def send(self, url: str, request_id: str, outcome: Outcome) -> None:
        self._pool.submit(self._deliver, url, webhook_payload(request_id, outcome))

    def close(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, url: str, payload: dict[str, Any]) -> bool:
        request_id = payload["request_id"]
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                response = httpx.post(url, json=payload, timeout=self.timeout)
                if response.status_code < 300:
                    logger.info("webhook for %s delivered to %s", request_id, url)
                    return True
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = str(exc) or type(exc).__name__
            logger.warning(
                "webhook for %s to %s failed (attempt %d/%d): %s",
                request_id,
                url,
                attempt,
                self.attempts,
                reason,
            )
            if attempt < self.attempts and self._stopping.wait(delay):
                break
            delay *= 2
        logger.error("webhook for %s to %s given up", request_id, url)
        return False
