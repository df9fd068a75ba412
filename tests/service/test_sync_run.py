"""fal's sync run ``POST /fal-ai/flux-2/flash/edit``: the output on the same connection (§8)."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image
from service_helpers import RUN_PATH, Service, data_uri, edit_body, png_bytes

MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff",
}


def _run(service: Service, **overrides: Any) -> dict[str, Any]:
    response = service.client.post(RUN_PATH, json=edit_body(**overrides))
    assert response.status_code == 200, response.text
    assert response.headers["x-fal-request-id"]
    body: dict[str, Any] = response.json()
    return body


def _check_format(data: bytes, fmt: str) -> None:
    if fmt == "webp":
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    else:
        assert data.startswith(MAGIC[fmt])


def test_run_returns_output_with_stored_files(service: Service) -> None:
    response = service.client.post(RUN_PATH, json=edit_body())
    assert response.status_code == 200
    request_id = response.headers["x-fal-request-id"]
    body = response.json()
    assert set(body) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert body["seed"] == 7
    assert body["prompt"] == "make it #FF5733"
    assert body["has_nsfw_concepts"] == [False]
    assert isinstance(body["timings"]["inference"], float)
    [image] = body["images"]
    assert set(image) == {"url", "content_type", "file_name", "file_size", "width", "height"}
    assert image["url"].startswith(f"http://testserver/files/{request_id}/")
    assert image["url"].endswith("/" + image["file_name"])
    assert image["file_name"].endswith(".png")
    assert image["content_type"] == "image/png"
    assert (image["width"], image["height"]) == (512, 512)
    download = service.client.get(image["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert len(download.content) == image["file_size"]
    _check_format(download.content, "png")
    assert Image.open(io.BytesIO(download.content)).size == (512, 512)


def test_run_custom_size(service: Service) -> None:
    body = _run(service, image_size={"width": 640, "height": 528})
    image = body["images"][0]
    assert (image["width"], image["height"]) == (640, 528)
    data = service.client.get(image["url"]).content
    assert Image.open(io.BytesIO(data)).size == (640, 528)


def test_seed_given_is_echoed_and_deterministic(service: Service) -> None:
    first = _run(service, seed=123456)
    second = _run(service, seed=123456)
    assert first["seed"] == second["seed"] == 123456
    a = service.client.get(first["images"][0]["url"]).content
    b = service.client.get(second["images"][0]["url"]).content
    assert a == b  # same seed, same prompt, same reference: same pixels
    other = _run(service, seed=123457)
    assert service.client.get(other["images"][0]["url"]).content != a


def test_seed_absent_is_random(service: Service) -> None:
    body = edit_body()
    del body["seed"]
    seeds = []
    for _ in range(2):
        response = service.client.post(RUN_PATH, json=body)
        assert response.status_code == 200
        seeds.append(response.json()["seed"])
    assert all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    assert seeds[0] != seeds[1]


@pytest.mark.parametrize(("fmt", "extension"), [("jpeg", "jpg"), ("webp", "webp"), ("png", "png")])
def test_output_format(service: Service, fmt: str, extension: str) -> None:
    image = _run(service, output_format=fmt)["images"][0]
    assert image["content_type"] == f"image/{fmt}"
    assert image["file_name"].endswith("." + extension)
    download = service.client.get(image["url"])
    assert download.headers["content-type"] == f"image/{fmt}"
    assert len(download.content) == image["file_size"]
    _check_format(download.content, fmt)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_sync_mode_returns_data_uris_and_stores_nothing(service: Service, fmt: str) -> None:
    body = _run(service, sync_mode=True, num_images=2, output_format=fmt)
    assert len(body["images"]) == 2
    for image in body["images"]:
        prefix = f"data:image/{fmt};base64,"
        assert image["url"].startswith(prefix)
        data = base64.b64decode(image["url"][len(prefix) :])
        assert len(data) == image["file_size"]
        _check_format(data, fmt)
        assert Image.open(io.BytesIO(data)).size == (image["width"], image["height"]) == (512, 512)
    assert list(service.files.iterdir()) == []


def test_num_images(service: Service) -> None:
    body = _run(service, num_images=3)
    images = body["images"]
    assert len(images) == 3
    assert body["has_nsfw_concepts"] == [False] * 3
    assert len({i["url"] for i in images}) == 3
    contents = [service.client.get(i["url"]).content for i in images]
    assert len(set(contents)) == 3  # seed + k: three different pictures
    for image, data in zip(images, contents, strict=True):
        assert len(data) == image["file_size"]


def test_more_than_four_references_uses_the_first_four(service: Service) -> None:
    urls = [data_uri(png_bytes(colour=(k * 40, 0, 0))) for k in range(4)]
    garbage = data_uri(b"this is not an image at all")  # the fifth: fails if it is used
    body = _run(service, image_urls=[*urls, garbage])
    assert len(body["images"]) == 1
    four = _run(service, image_urls=urls)
    a = service.client.get(body["images"][0]["url"]).content
    b = service.client.get(four["images"][0]["url"]).content
    assert a == b


def test_prompt_expansion(service: Service) -> None:
    plain = _run(service)
    expanded = _run(service, enable_prompt_expansion=True)
    assert plain["prompt"] == "make it #FF5733"
    assert expanded["prompt"] != plain["prompt"]
    assert expanded["prompt"].startswith("make it #FF5733")


def test_run_error_outcome_has_fal_headers(service: Service) -> None:
    response = service.client.post(RUN_PATH, json=edit_body(image_urls=["ftp://example.com/x.png"]))
    assert response.status_code == 422
    assert response.headers["x-fal-request-id"]
    assert response.headers["x-fal-error-type"] == "file_download_error"
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "image_urls", 0]
    assert problem["type"] == "file_download_error"
