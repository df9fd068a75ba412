"""The ArtifactStore contract: every test runs on the local-disk and the Redis store alike."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.errors import NotFound, StorageError
from service.storage.base import ArtifactStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\xff" * 100
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x01" * 50


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [
        ("a1.png", PNG, "image/png"),
        ("b2.jpeg", JPEG, "image/jpeg"),
        ("c3.webp", WEBP, "image/webp"),
    ],
)
def test_put_then_open_returns_the_bytes_and_type(
    store: ArtifactStore, name: str, data: bytes, content_type: str
) -> None:
    key = store.put("job-1", name, data, content_type)
    assert key == f"job-1/{name}"
    artifact = store.open(key)
    assert (artifact.data, artifact.content_type) == (data, content_type)


def test_put_replaces_a_file(store: ArtifactStore) -> None:
    store.put("job-1", "x.png", b"old", "image/png")
    store.put("job-1", "x.png", PNG, "image/png")
    assert store.open("job-1/x.png").data == PNG


@pytest.mark.parametrize("key", ["job-1/missing.png", "nobody/x.png", "job-1", "job-1/", "/x"])
def test_unknown_keys_are_not_found(store: ArtifactStore, key: str) -> None:
    store.put("job-1", "x.png", PNG, "image/png")
    with pytest.raises(NotFound):
        store.open(key)


@pytest.mark.parametrize(
    "key",
    ["../x.png", "job-1/../job-1/x.png", "../../etc/passwd", "job-1/.hidden", "./x.png",
     "job-1/a/b.png", "job-1/..", "..", "job-1/x.png\x00", "%2e%2e/x.png", "job-1/x y.png"],
)  # fmt: skip
def test_unsafe_keys_never_reach_outside(store: ArtifactStore, key: str) -> None:
    store.put("job-1", "x.png", PNG, "image/png")
    with pytest.raises(NotFound):
        store.open(key)


@pytest.mark.parametrize(
    ("owner", "name"),
    [("job-1", "../escape.png"), ("job-1", ".hidden.png"), ("job-1", "a/b.png"),
     ("..", "escape.png"), ("../job", "escape.png"), ("job-1", ""), ("", "x.png")],
)  # fmt: skip
def test_unsafe_names_are_refused(
    store: ArtifactStore, tmp_path: Path, owner: str, name: str
) -> None:
    before = set(tmp_path.rglob("*"))
    with pytest.raises((NotFound, StorageError)):
        store.put(owner, name, PNG, "image/png")
    created = set(tmp_path.rglob("*")) - before
    assert all(path.is_relative_to(tmp_path / "files") for path in created)
    assert not any(path.name == "escape.png" for path in tmp_path.parent.rglob("escape.png"))


def test_delete_removes_all_files_of_an_owner_only(store: ArtifactStore) -> None:
    keys = [store.put("job-1", f"img-{i}.png", PNG, "image/png") for i in range(3)]
    other = store.put("job-2", "img-0.png", JPEG, "image/jpeg")
    store.delete("job-1")
    for key in keys:
        with pytest.raises(NotFound):
            store.open(key)
    assert store.open(other).data == JPEG
    store.delete("job-1")  # twice is fine
    store.delete("never-stored")


def test_redis_files_expire_after_the_ttl(redis_url: str, key_prefix: str) -> None:
    from service.storage.redis import RedisArtifactStore

    store = RedisArtifactStore(redis_url, ttl=0.3, key_prefix=key_prefix)
    try:
        key = store.put("job-1", "x.png", PNG, "image/png")
        assert store.open(key).data == PNG
        deadline = time.monotonic() + 5
        while True:
            try:
                store.open(key)
            except NotFound:
                break
            assert time.monotonic() < deadline, "the file never expired"
            time.sleep(0.05)
    finally:
        store.close()


def test_redis_store_errors_are_storage_errors(redis_url: str, key_prefix: str) -> None:
    import redis

    from service.storage.redis import RedisArtifactStore

    store = RedisArtifactStore(redis_url, key_prefix=key_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(f"{key_prefix}file:job-1/x.png", b"not a hash")
        with pytest.raises(StorageError):
            store.open("job-1/x.png")
        with pytest.raises(StorageError):
            store.put("job-1", "x.png", PNG, "image/png")
    finally:
        client.close()
        store.close()
