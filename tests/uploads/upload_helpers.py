"""Helpers (not fixtures) for the upload tests: the clients' upload flows, request by request."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from PIL import Image
from starlette.testclient import TestClient

from service.bootstrap import Components
from tests.helpers.fal import RUN_PATH

MakeClient = Callable[..., tuple[TestClient, Components]]

RED = (220, 30, 40)
BLUE = (20, 40, 230)
ALICE, BOB = "alice-key", "bob-key"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Key {key}"}


def initiate(client: TestClient, headers: dict[str, str] | None = None, **query: str) -> Any:
    response = client.post(
        "/storage/upload/initiate",
        params={"storage_type": "fal-cdn-v3", **query},
        json={"content_type": "image/png", "file_name": "car.png"},
        headers=headers or {},
    )
    assert response.status_code == 200, response.text
    return response.json()


def js_upload(client: TestClient, data: bytes, headers: dict[str, str] | None = None) -> str:
    """What ``fal.storage.upload(blob)`` does: initiate (with the key), PUT (without)."""
    urls = initiate(client, headers)
    put = client.put(urls["upload_url"], content=data, headers={"Content-Type": "image/png"})
    assert put.status_code == 200, put.text
    return str(urls["file_url"])


def python_upload(client: TestClient, data: bytes, headers: dict[str, str] | None = None) -> str:
    """What ``fal_client.upload(data, "image/png")`` does with the fal_v3 repository."""
    token = client.post(
        "/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}, headers=headers or {}
    )
    assert token.status_code == 200, token.text
    grant = token.json()
    posted = client.post(
        "/files/upload",
        content=data,
        headers={
            "Authorization": f"{grant['token_type']} {grant['token']}",
            "Content-Type": "image/png",
            "X-Fal-File-Name": "car.png",
        },
    )
    assert posted.status_code == 200, posted.text
    return str(posted.json()["access_url"])


def edit(client: TestClient, url: str, headers: dict[str, str] | None = None) -> Any:
    body = {"prompt": "paint it", "image_urls": [url], "image_size": "square", "sync_mode": True}
    return client.post(RUN_PATH, json=body, headers=headers or {})


def centre_colour(output: dict[str, Any]) -> tuple[int, ...]:
    """The fake engine pastes the first reference in the middle of its output."""
    data = base64.b64decode(output["images"][0]["url"].split(",", 1)[1])
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return tuple(image.getpixel((image.width // 2, image.height // 2)))
