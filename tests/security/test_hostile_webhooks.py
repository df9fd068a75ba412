"""Hostile ``fal_webhook`` URLs: malformed ones are refused at submit (fal's 422), internal
addresses are never POSTed to whatever their spelling, and redirects are never followed.

Receivers run on 127.0.0.1 (internal: must never get a webhook) and 127.0.0.2 (allowed by the
operator in some tests; it redirects to 127.0.0.1).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from security_helpers import PNG_URI, SUBMIT_PATH, assert_fal_problems, wait_completed
from ssrf_spellings import INTERNAL_URLS, refusal
from starlette.testclient import TestClient

from service.bootstrap import build_app
from service.guard import webhook_policy
from service.jobs import Outcome
from service.queue.memory import InMemoryJobQueue
from service.settings import Settings
from service.webhooks import WebhookSender, webhook_payload
from tests.helpers.services import fake_components

OK = Outcome(status_code=200, body={"images": []}, inference_time=0.1)
BODY = {"prompt": "make it #FF5733", "image_urls": [PNG_URI], "image_size": "square", "seed": 7}
WEBHOOK_LOC = ["query", "fal_webhook"]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with self.server.lock:
            self.server.hits.append(self.path)
        if self.server.redirect_to is not None and self.path == "/redirect":
            self.send_response(307)
            self.send_header("Location", self.server.redirect_to)
        else:
            self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None


class Receiver(ThreadingHTTPServer):
    """Records the path of every POST; ``/redirect`` answers 307 to ``redirect_to``."""

    def __init__(self, host: str, redirect_to: str | None = None) -> None:
        super().__init__((host, 0), _Handler)
        self.hits: list[str] = []
        self.lock = threading.Lock()
        self.redirect_to = redirect_to
        self.port = int(self.server_address[1])
        self.base = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def internal() -> Iterator[Receiver]:
    receiver = Receiver("127.0.0.1")
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def allowed(internal: Receiver) -> Iterator[Receiver]:
    receiver = Receiver("127.0.0.2", redirect_to=f"{internal.base}/hook")
    yield receiver
    receiver.stop()


@pytest.fixture(autouse=True)
def _nothing_reaches_the_internal_receiver(internal: Receiver) -> Iterator[None]:
    yield
    assert internal.hits == []


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "service.webhooks"]


# -- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "url"), INTERNAL_URLS, ids=[name for name, _ in INTERNAL_URLS])
def test_webhook_to_an_internal_address_is_refused(
    name: str, url: str, internal: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    sender = WebhookSender(attempts=3, backoff=0.01, timeout=5)  # the default policy
    try:
        with caplog.at_level(logging.WARNING, logger="service.webhooks"):
            delivered = sender._deliver(url.replace("{port}", str(internal.port)), _payload())
    finally:
        sender.close()
    assert delivered is False
    messages = _messages(caplog)
    assert any(refusal(name) in message for message in messages), messages
    assert not any("attempt" in message for message in messages), messages  # not retried


def test_refusal_tells_the_operator_what_to_set(
    internal: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    sender = WebhookSender(attempts=1, timeout=5)
    try:
        with caplog.at_level(logging.ERROR, logger="service.webhooks"):
            assert sender._deliver(f"{internal.base}/hook", _payload()) is False
    finally:
        sender.close()
    [message] = _messages(caplog)
    assert "refused to send webhooks to 127.0.0.1" in message
    assert "FLUX2_WEBHOOK_ALLOW" in message


def test_redirects_are_not_followed(allowed: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """The allowed receiver answers 307 to the internal one: nothing is sent there, and the
    307 is final (no retries)."""
    sender = WebhookSender(attempts=3, backoff=0.01, timeout=5, policy=webhook_policy("127.0.0.2"))
    try:
        with caplog.at_level(logging.WARNING, logger="service.webhooks"):
            assert sender._deliver(f"{allowed.base}/redirect", _payload()) is False
    finally:
        sender.close()
    assert allowed.hits == ["/redirect"]
    [message] = _messages(caplog)
    assert "redirects are not followed" in message


def test_allowed_receiver_gets_its_webhook(allowed: Receiver) -> None:
    sender = WebhookSender(attempts=1, timeout=5, policy=webhook_policy("127.0.0.2/32"))
    try:
        assert sender._deliver(f"{allowed.base}/ok", _payload()) is True
    finally:
        sender.close()
    assert allowed.hits[-1] == "/ok"


def _payload() -> dict[str, Any]:
    return webhook_payload("req-1", OK)


# -- through the service ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    """The app with a default (public addresses only) webhook sender."""
    root = tmp_path_factory.mktemp("hostile-webhooks")
    queue = InMemoryJobQueue()
    parts = fake_components(root, queue=queue)  # the sender the settings describe
    with TestClient(build_app(parts)) as test_client:
        yield test_client, queue


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "/relative/hook",
        "hooks.example.com/hook",  # no scheme
        "ftp://hooks.example.com/hook",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "javascript:alert(1)",
        "http://",
        "http://[::1/hook",
        "http://0177.0.0.1/hook",  # octal: no parser agrees on what it means
        "http://example.com/" + "a" * 2100,
    ],
)
def test_malformed_webhook_is_refused_at_submit(client: tuple[TestClient, Any], url: str) -> None:
    test_client, _ = client
    response = test_client.post(SUBMIT_PATH, params={"fal_webhook": url}, json=BODY)
    assert_fal_problems(response, 422, response.json()["detail"][0]["type"], WEBHOOK_LOC)
    assert response.json()["detail"][0]["type"] in {"url_parsing", "url_scheme", "url_too_long"}


def test_internal_webhook_is_accepted_at_submit_and_never_sent(
    client: tuple[TestClient, Any], internal: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Where a host points is only known when connecting (DNS may change): the job runs, its
    webhook is refused when it is delivered."""
    test_client, queue = client
    with caplog.at_level(logging.ERROR, logger="service.webhooks"):
        response = test_client.post(
            SUBMIT_PATH, params={"fal_webhook": f"{internal.base}/hook"}, json=BODY
        )
        assert response.status_code == 200, response.text
        view = wait_completed(queue, response.json()["request_id"])
        assert view.outcome.ok
        deadline = time.monotonic() + 10
        while not _messages(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert any("refused to send webhooks to 127.0.0.1" in m for m in _messages(caplog))


def test_settings_allow_list_reaches_the_sender(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path, webhook_allow="hooks.internal, 10.20.0.0/16")
    sender = WebhookSender.from_settings(settings.webhooks)
    sender.close()
    assert sender.policy.host_allowed("hooks.internal")
    assert sender.policy.setting == "FLUX2_WEBHOOK_ALLOW"
    default = WebhookSender.from_settings(Settings(cache_dir=tmp_path).webhooks)
    default.close()
    assert not default.policy.allow_all
    assert not default.policy.host_allowed("hooks.internal")
