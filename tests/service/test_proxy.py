"""fal's proxy contract: one URL, the real target in ``x-fal-target-url`` (§9.2)."""

from __future__ import annotations

from typing import Any

import httpx
from service_helpers import Service, edit_body, step_messages

PROXY = "/api/fal/proxy"
QUEUE = "https://queue.fal.run"
RUN = "https://fal.run"


def _via_proxy(service: Service, method: str, target: str, **kwargs: Any) -> httpx.Response:
    """What the JS client sends with ``proxyUrl``: the call, intact, to the proxy URL."""
    headers = {"x-fal-target-url": target, "content-type": "application/json"}
    return service.client.request(method, PROXY, headers=headers, **kwargs)


def test_proxy_submit_status_result(service: Service) -> None:
    response = _via_proxy(service, "POST", f"{QUEUE}/fal-ai/flux-2/flash/edit", json=edit_body())
    assert response.status_code == 200
    submitted = response.json()
    request_id = submitted["request_id"]
    assert submitted["status_url"].endswith(f"/queue/fal-ai/flux-2/requests/{request_id}/status")
    service.wait_status(request_id)
    status = _via_proxy(
        service, "GET", f"{QUEUE}/fal-ai/flux-2/requests/{request_id}/status?logs=1"
    )
    assert status.status_code == 200
    body = status.json()
    assert body["status"] == "COMPLETED"
    assert step_messages(body["logs"]) == [f"step {k}/4" for k in range(1, 5)]
    no_logs = _via_proxy(service, "GET", f"{QUEUE}/fal-ai/flux-2/requests/{request_id}/status")
    assert no_logs.json()["logs"] is None
    result = _via_proxy(service, "GET", f"{QUEUE}/fal-ai/flux-2/requests/{request_id}")
    assert result.status_code == 200
    assert result.headers["x-fal-request-id"] == request_id
    assert result.json()["seed"] == 7
    cancel = _via_proxy(service, "PUT", f"{QUEUE}/fal-ai/flux-2/requests/{request_id}/cancel")
    assert cancel.status_code == 400
    assert cancel.json() == {"status": "ALREADY_COMPLETED"}


def test_proxy_sync_run(service: Service) -> None:
    response = _via_proxy(service, "POST", f"{RUN}/fal-ai/flux-2/flash/edit", json=edit_body())
    assert response.status_code == 200
    body = response.json()
    assert body["seed"] == 7
    image = body["images"][0]
    download = service.client.get(image["url"])
    assert download.status_code == 200
    assert len(download.content) == image["file_size"]


def test_proxy_unknown_id(service: Service) -> None:
    response = _via_proxy(service, "GET", f"{QUEUE}/fal-ai/flux-2/requests/nope/status?logs=1")
    assert response.status_code == 404
    assert response.json()["status"] == "NOT_FOUND"


def test_proxy_without_target_is_404(service: Service) -> None:
    response = service.client.post(PROXY, json=edit_body())
    assert response.status_code == 404
    assert response.json() == {"detail": f"Path {PROXY} not found"}


def test_proxy_preflight(service: Service) -> None:
    """A browser asks before it sends ``x-fal-target-url`` to the proxy URL."""
    response = service.client.options(
        PROXY,
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-fal-target-url",
        },
    )
    assert response.status_code == 200
    allow_headers = response.headers["access-control-allow-headers"]
    assert "x-fal-target-url" in {h.strip().lower() for h in allow_headers.split(",")}
