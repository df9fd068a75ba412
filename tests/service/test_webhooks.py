"""Webhook delivery (§11): payload shapes, retries, giving up, end to end via ``fal_webhook``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from service_helpers import (
    RUN_PATH,
    SUBMIT_PATH,
    MakeService,
    edit_body,
    free_port,
    wait_for,
    webhook_server,
)

from service.guard import webhook_policy
from service.jobs import Outcome
from service.webhooks import WebhookSender, webhook_payload

OUTPUT = {"images": [{"url": "http://x/files/a/b.png"}], "seed": 196619188014358660}
PROBLEMS = {
    "detail": [
        {
            "loc": ["body", "prompt"],
            "msg": "Field required",
            "type": "missing",
            "url": "https://docs.fal.ai/errors/#missing",
        }
    ]
}
OK = Outcome(status_code=200, body=OUTPUT, inference_time=0.2)
INVALID = Outcome(status_code=422, body=PROBLEMS, error="Field required", error_type="missing")
LOOPBACK = webhook_policy("127.0.0.1")  # the receivers run on loopback, internal by default


@pytest.fixture
def sender() -> Iterator[WebhookSender]:
    webhooks = WebhookSender(attempts=3, backoff=0.05, timeout=5, policy=LOOPBACK)
    yield webhooks
    webhooks.close()


def test_payloads() -> None:
    assert webhook_payload("r1", OK) == {
        "request_id": "r1",
        "gateway_request_id": "r1",
        "status": "OK",
        "payload": OUTPUT,
    }
    assert webhook_payload("r2", INVALID) == {
        "request_id": "r2",
        "gateway_request_id": "r2",
        "status": "ERROR",
        "error": "Invalid status code: 422",
        "payload": PROBLEMS,
    }


def test_delivers_ok(sender: WebhookSender) -> None:
    with webhook_server() as hook:
        sender.send(hook.url, "req-1", OK)
        wait_for(lambda: hook.count() == 1, what="delivery")
        assert hook.bodies == [
            {
                "request_id": "req-1",
                "gateway_request_id": "req-1",
                "status": "OK",
                "payload": OUTPUT,
            }
        ]
        assert hook.headers[0]["content-type"] == "application/json"


def test_delivers_error(sender: WebhookSender) -> None:
    with webhook_server() as hook:
        sender.send(hook.url, "req-2", INVALID)
        wait_for(lambda: hook.count() == 1, what="delivery")
        [body] = hook.bodies
        assert body["status"] == "ERROR"
        assert body["error"] == "Invalid status code: 422"
        assert body["payload"]["detail"] == PROBLEMS["detail"]
        assert body["request_id"] == body["gateway_request_id"] == "req-2"


def test_retries_after_server_errors(sender: WebhookSender) -> None:
    with webhook_server(codes=[500, 503]) as hook:
        started = time.monotonic()
        sender.send(hook.url, "req-3", OK)
        wait_for(lambda: hook.count() == 3, what="three attempts")
        assert time.monotonic() - started >= 0.05 + 0.1  # backoff doubles
        assert all(body == hook.bodies[0] for body in hook.bodies)
        time.sleep(0.3)  # the third succeeded: nothing more comes
        assert hook.count() == 3


def test_gives_up_after_attempts(sender: WebhookSender) -> None:
    with webhook_server(codes=[500] * 10) as hook:
        assert sender._deliver(hook.url, webhook_payload("req-4", OK)) is False
        assert hook.count() == 3


def test_gives_up_on_unreachable_receiver(sender: WebhookSender) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    assert sender._deliver(url, webhook_payload("req-5", OK)) is False


def test_close_stops_retrying() -> None:
    # Retries 0.1 s, 0.2 s and 0.4 s after the first attempt: well inside the 1 s watched
    # below, so a sender that kept retrying after close() would be seen doing it.
    webhooks = WebhookSender(attempts=5, backoff=0.1, timeout=5, policy=LOOPBACK)
    with webhook_server(codes=[500] * 10) as hook:
        webhooks.send(hook.url, "req-6", OK)
        wait_for(lambda: hook.count() == 1, what="first attempt")
        webhooks.close()
        time.sleep(1.0)
        assert hook.count() == 1


def test_without_close_the_sender_retries() -> None:
    """The counterpart of the test above: the same failing receiver is retried when the
    sender is not closed."""
    webhooks = WebhookSender(attempts=3, backoff=0.1, timeout=5, policy=LOOPBACK)
    with webhook_server(codes=[500] * 10) as hook:
        webhooks.send(hook.url, "req-7", OK)
        wait_for(lambda: hook.count() == 3, what="three attempts", timeout=5)
    webhooks.close()


# -- end to end ----------------------------------------------------------------------------------


def test_submit_with_fal_webhook(make_service: MakeService, sender: WebhookSender) -> None:
    svc = make_service(webhooks=sender)
    with webhook_server() as hook:
        response = svc.client.post(SUBMIT_PATH, params={"fal_webhook": hook.url}, json=edit_body())
        request_id = response.json()["request_id"]
        wait_for(lambda: hook.count() == 1, what="the webhook")
        svc.wait_status(request_id)
        [body] = hook.bodies
        assert body["request_id"] == body["gateway_request_id"] == request_id
        assert body["status"] == "OK"
        assert body["payload"] == svc.result(request_id).json()
        assert body["payload"]["seed"] == 7


@pytest.mark.parametrize(
    "overrides",
    [{"guidance_scale": 21}, {"image_urls": ["ftp://example.com/x.png"]}],
    ids=["schema", "download"],
)
def test_failed_job_sends_error_webhook(
    make_service: MakeService, sender: WebhookSender, overrides: dict[str, object]
) -> None:
    svc = make_service(webhooks=sender)
    with webhook_server() as hook:
        response = svc.client.post(
            SUBMIT_PATH, params={"fal_webhook": hook.url}, json=edit_body(**overrides)
        )
        request_id = response.json()["request_id"]
        wait_for(lambda: hook.count() == 1, what="the webhook")
        [body] = hook.bodies
        assert body["request_id"] == request_id
        assert body["status"] == "ERROR"
        assert body["error"] == "Invalid status code: 422"
        assert body["payload"] == svc.result(request_id).json()
        assert isinstance(body["payload"]["detail"], list)


def test_sync_run_sends_no_webhook(make_service: MakeService, sender: WebhookSender) -> None:
    svc = make_service(webhooks=sender)
    with webhook_server() as hook:
        response = svc.client.post(RUN_PATH, params={"fal_webhook": hook.url}, json=edit_body())
        assert response.status_code == 200
        time.sleep(0.2)
        assert hook.count() == 0


def test_cancelling_a_queued_job_sends_its_webhook(
    make_service: MakeService, sender: WebhookSender
) -> None:
    svc = make_service(webhooks=sender, gated=True)  # the worker never starts: it stays queued
    with webhook_server() as hook:
        response = svc.client.post(SUBMIT_PATH, params={"fal_webhook": hook.url}, json=edit_body())
        request_id = response.json()["request_id"]
        assert svc.cancel(request_id).status_code == 202
        wait_for(lambda: hook.count() == 1, what="the webhook")
        [body] = hook.bodies
        assert body["request_id"] == request_id
        assert body["status"] == "ERROR"
        assert body["error"] == "Invalid status code: 499"
        assert body["payload"] == svc.result(request_id).json()
        assert svc.cancel(request_id).status_code == 400  # already completed: no second one
        time.sleep(0.2)
        assert hook.count() == 1


def test_cancelling_a_running_job_sends_one_webhook(
    make_service: MakeService, sender: WebhookSender
) -> None:
    svc = make_service(webhooks=sender, num_steps=50, step_seconds=0.05)
    with webhook_server() as hook:
        response = svc.client.post(SUBMIT_PATH, params={"fal_webhook": hook.url}, json=edit_body())
        request_id = response.json()["request_id"]
        svc.wait_status(request_id, "IN_PROGRESS")
        assert svc.cancel(request_id).status_code == 202
        wait_for(lambda: hook.count() == 1, what="the webhook")  # sent by the worker
        svc.wait_status(request_id)
        time.sleep(0.2)
        assert hook.count() == 1
        assert hook.bodies[0]["error"] == "Invalid status code: 499"
