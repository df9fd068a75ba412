"""Webhook delivery: fal's OK/ERROR payloads, POSTed with retries and exponential backoff.

Deliveries go through the SSRF guard (:mod:`service.guard`): by default only to public addresses,
checked on the address connected to; operators allow internal receivers with
``FLUX2_WEBHOOK_ALLOW``. Redirects are never followed: a receiver answering 3xx is not retried.
``fal_webhook`` itself is checked at submit (:func:`service.guard.check_webhook_url`).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx2

from service.guard import AddressPolicy, guarded_client, refused_by_guard, webhook_policy
from service.jobs import Outcome

if TYPE_CHECKING:
    from service.settings import WebhookSettings

logger = logging.getLogger(__name__)


def webhook_payload(request_id: str, outcome: Outcome) -> dict[str, Any]:
    """The body fal sends to ``fal_webhook`` (docs/reference/fal-protocol.md §11)."""
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
    """Delivers webhooks on background threads; a failed delivery is retried, then logged.

    Args:
        attempts, backoff, timeout: deliveries per webhook, the first retry delay (doubling),
            and the timeout of one delivery.
        policy: where webhooks may go (:func:`webhook_policy`); public addresses by default.
    """

    def __init__(
        self,
        *,
        attempts: int = 6,
        backoff: float = 2.0,
        timeout: float = 15.0,
        policy: AddressPolicy | None = None,
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.policy = policy if policy is not None else webhook_policy()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")
        self._stopping = threading.Event()

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> WebhookSender:
        return cls(
            attempts=settings.webhook_attempts,
            backoff=settings.webhook_backoff_seconds,
            policy=webhook_policy(settings.webhook_allow),
        )

    def send(self, url: str, request_id: str, outcome: Outcome) -> None:
        self._pool.submit(self._deliver, url, webhook_payload(request_id, outcome))

    def close(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, url: str, payload: dict[str, Any]) -> bool:
        request_id = payload["request_id"]
        delay = self.backoff
        with guarded_client(self.policy, timeout=httpx2.Timeout(self.timeout)) as client:
            for attempt in range(1, self.attempts + 1):
                try:
                    response = client.post(url, json=payload)
                except (httpx2.UnsupportedProtocol, httpx2.InvalidURL, ValueError) as exc:
                    return _given_up(request_id, url, f"not an http(s) URL: {exc}")
                except httpx2.HTTPError as exc:
                    if refused_by_guard(exc):
                        return _given_up(request_id, url, str(exc))
                    reason = str(exc) or type(exc).__name__
                else:
                    if response.status_code < 300:
                        logger.info("webhook for %s delivered to %s", request_id, url)
                        return True
                    if response.status_code < 400:
                        return _given_up(
                            request_id,
                            url,
                            f"HTTP {response.status_code}: webhook redirects are not followed",
                        )
                    reason = f"HTTP {response.status_code}"
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


def _given_up(request_id: str, url: str, reason: str) -> bool:
    """A failure that retrying cannot fix: logged once, not retried."""
    logger.error("webhook for %s to %s not sent: %s", request_id, url, reason)
    return False
