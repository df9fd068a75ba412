"""fal's storage protocol on the server, request by request, as the official clients send it
(docs/reference/fal-protocol.md §10): the returned URLs work in ``image_urls``, uploads belong to
the key that made them, signed URLs expire, and only images under the size cap are kept."""

from __future__ import annotations

import io
import os
import time
from datetime import datetime

import pytest
from PIL import Image
from upload_helpers import (
    ALICE,
    BLUE,
    BOB,
    RED,
    MakeClient,
    auth,
    centre_colour,
    edit,
    initiate,
    js_upload,
    python_upload,
)

from service.uploads import Kind, UploadSigner
from tests.helpers.images import png_bytes


def test_js_flow_gives_a_url_that_edits_accept(make_client: MakeClient) -> None:
    client, _ = make_client()
    urls = initiate(client)
    assert urls["file_url"].startswith("http://testserver/uploads/")
    assert urls["upload_url"].startswith("http://testserver/storage/upload/")
    put = client.put(urls["upload_url"], content=png_bytes(colour=RED))
    assert put.status_code == 200, put.text
    assert put.json()["content_type"] == "image/png"
    answer = edit(client, urls["file_url"])
    assert answer.status_code == 200, answer.text
    assert centre_colour(answer.json()) == RED
    fetched = client.get(urls["file_url"])
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.content == png_bytes(colour=RED)


def test_python_token_flow_gives_a_url_that_edits_accept(make_client: MakeClient) -> None:
    client, _ = make_client()
    grant = client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={})
    assert grant.status_code == 200, grant.text
    body = grant.json()
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.tzinfo is not None  # fal_client compares it with an aware datetime
    assert 600 < expires.timestamp() - time.time() <= 900
    assert body["base_url"] == "http://testserver"
    url = python_upload(client, png_bytes(colour=BLUE))
    answer = edit(client, url)
    assert answer.status_code == 200, answer.text
    assert centre_colour(answer.json()) == BLUE


def test_the_gcs_fallback_puts_with_the_key(make_client: MakeClient) -> None:
    client, _ = make_client(api_keys=ALICE)
    urls = initiate(client, auth(ALICE), storage_type="gcs")
    put = client.put(urls["upload_url"], content=png_bytes(colour=RED), headers=auth(ALICE))
    assert put.status_code == 200, put.text
    assert centre_colour(edit(client, urls["file_url"], auth(ALICE)).json()) == RED


def split(data: bytes, parts: int) -> list[bytes]:
    size = -(-len(data) // parts)
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_js_multipart_upload(make_client: MakeClient) -> None:
    client, _ = make_client()
    data = png_bytes(256, 256, colour=BLUE)
    urls = client.post(
        "/storage/upload/initiate-multipart",
        params={"storage_type": "fal-cdn-v3"},
        json={"content_type": "image/png", "file_name": "big.png"},
    ).json()
    path, _, query = urls["upload_url"].partition("?")
    done = []
    for number, chunk in enumerate(split(data, 3), start=1):
        part = client.put(f"{path}/{number}?{query}", content=chunk)
        assert part.status_code == 200, part.text
        done.append(part.json())
    assert [p["partNumber"] for p in done] == [1, 2, 3]
    complete = client.post(f"{path}/complete?{query}", json={"parts": done})
    assert complete.status_code == 200, complete.text
    assert centre_colour(edit(client, urls["file_url"]).json()) == BLUE


def test_python_multipart_upload(make_client: MakeClient) -> None:
    client, _ = make_client()
    grant = client.post("/storage/auth/token", json={}).json()
    bearer = {"Authorization": f"Bearer {grant['token']}"}
    created = client.post(
        f"{grant['base_url']}/files/upload/multipart",
        headers={**bearer, "Content-Type": "image/png", "X-Fal-File-Name": "big.png"},
    ).json()
    access, upload_id = created["access_url"], created["uploadId"]
    parts = []
    for number, chunk in enumerate(split(png_bytes(200, 200, colour=RED), 2), start=1):
        put = client.put(f"{access}/multipart/{upload_id}/{number}", content=chunk, headers=bearer)
        assert put.status_code == 200, put.text
        parts.append({"partNumber": number, "etag": put.headers["etag"]})
    complete = client.post(f"{access}/multipart/{upload_id}/complete", json={"parts": parts},
                           headers=bearer)  # fmt: skip
    assert complete.status_code == 200, complete.text
    assert centre_colour(edit(client, access).json()) == RED
    wrong = client.post(
        f"{access}/multipart/{upload_id}/complete",
        json={"parts": [{"partNumber": 1, "etag": "0" * 32}]},
        headers=bearer,
    )
    assert wrong.status_code in (404, 422), wrong.text  # the parts are gone, or the tag is wrong


def test_an_upload_of_another_key_is_not_readable(make_client: MakeClient) -> None:
    client, _ = make_client(api_keys=f"{ALICE},{BOB}")
    url = js_upload(client, png_bytes(colour=RED), auth(ALICE))
    assert client.get(url, headers=auth(ALICE)).status_code == 200
    assert client.get(url, headers=auth(BOB)).status_code == 404
    assert client.get(url).status_code == 401
    assert centre_colour(edit(client, url, auth(ALICE)).json()) == RED
    refused = edit(client, url, auth(BOB))
    assert refused.status_code == 422, refused.text
    (problem,) = refused.json()["detail"]
    assert problem["type"] == "file_download_error"
    assert problem["loc"] == ["body", "image_urls", 0]
    # Starting an upload needs a key; the token route too.
    assert client.post("/storage/upload/initiate", json={}).status_code == 401
    assert client.post("/storage/auth/token", json={}).status_code == 401


def test_an_expired_or_forged_upload_url_is_refused(make_client: MakeClient) -> None:
    client, _ = make_client(upload_secret="s3cret")
    urls = initiate(client)
    path, _, query = urls["upload_url"].partition("?token=")
    upload_id = path.rsplit("/", 1)[1]
    signer = UploadSigner(b"s3cret")
    expired, _ = signer.sign(Kind.PUT, None, upload_id, expires=time.time() - 1)
    answer = client.put(f"{path}?token={expired}", content=png_bytes())
    assert answer.status_code == 401, answer.text
    assert "expired" in answer.json()["detail"]
    other, _ = UploadSigner(b"another secret").sign(Kind.PUT, None, upload_id)
    assert client.put(f"{path}?token={other}", content=png_bytes()).status_code == 401
    elsewhere, _ = signer.sign(Kind.PUT, None, "0" * 32)
    assert client.put(f"{path}?token={elsewhere}", content=png_bytes()).status_code == 401
    assert client.put(path, content=png_bytes()).status_code == 401
    cdn, _ = signer.sign(Kind.CDN, None)  # an upload token is not a signed URL
    assert client.put(f"{path}?token={cdn}", content=png_bytes()).status_code == 401
    expired_token, _ = signer.sign(Kind.CDN, None, expires=time.time() - 1)
    refused = client.post(
        "/files/upload", content=png_bytes(), headers={"Authorization": f"Bearer {expired_token}"}
    )
    assert refused.status_code == 401
    assert client.put(f"{path}?token={query}", content=png_bytes()).status_code == 200


def test_uploads_are_sniffed_and_capped(make_client: MakeClient) -> None:
    client, _ = make_client(upload_max_bytes=4096)
    urls = initiate(client)
    text = client.put(urls["upload_url"], content=b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert text.status_code == 422, text.text
    assert text.json()["detail"][0]["type"] == "unsupported_image_format"
    bmp = io.BytesIO()
    Image.new("RGB", (16, 16)).save(bmp, format="BMP")
    assert client.put(urls["upload_url"], content=bmp.getvalue()).status_code == 422
    noisy = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(noisy, format="PNG")
    assert len(noisy.getvalue()) > 4096
    big = client.put(urls["upload_url"], content=noisy.getvalue())
    assert big.status_code == 413, big.text
    assert big.json()["error_type"] == "request_too_large"
    assert client.get(urls["file_url"]).status_code == 404  # nothing was kept


def test_uploads_expire(make_client: MakeClient) -> None:
    client, parts = make_client(upload_ttl_seconds=60)
    url = js_upload(client, png_bytes())
    assert client.get(url).status_code == 200
    folder = parts.settings.storage.uploads_root / url.rsplit("/", 1)[1]
    for file in folder.iterdir():
        os.utime(file, (time.time() - 61, time.time() - 61))
    assert client.get(url).status_code == 404
    refused = edit(client, url)
    assert refused.json()["detail"][0]["type"] == "file_download_error"


@pytest.mark.parametrize("origin", ["http://127.0.0.1:9", "http://localhost:9"])
def test_other_loopback_urls_stay_refused(make_client: MakeClient, origin: str) -> None:
    client, _ = make_client()
    upload_id = js_upload(client, png_bytes()).rsplit("/", 1)[1]
    refused = edit(client, f"{origin}/uploads/{upload_id}")  # the same path, not our origin
    assert refused.status_code == 422
    (problem,) = refused.json()["detail"]
    assert problem["type"] == "file_download_error"
    assert "internal addresses are refused" in problem["msg"]
