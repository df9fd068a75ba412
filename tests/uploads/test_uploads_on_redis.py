"""Uploads across API nodes on Redis: started on one node, PUT to another, used in an edit
submitted to either, read by a worker elsewhere; the nodes share ``FLUX2_UPLOAD_SECRET``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient
from upload_helpers import BLUE, centre_colour, edit, initiate

from service.bootstrap import Role, build_app
from tests.helpers.images import png_bytes
from tests.helpers.services import fake_components


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[str]:
    """A database of the session's Redis of its own, emptied before and after."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def test_an_upload_crosses_api_nodes(tmp_path: Path, redis_db: str) -> None:
    settings = {"redis_url": redis_db, "upload_secret": "shared"}
    worker = fake_components(tmp_path / "worker", role=Role.WORKER, **settings)
    node_a = fake_components(tmp_path / "a", role=Role.API, **settings)
    node_b = fake_components(tmp_path / "b", role=Role.API, **settings)
    node_c = fake_components(tmp_path / "c", role=Role.API, redis_url=redis_db)  # its own key
    assert worker.worker is not None
    worker.worker.start()
    try:
        with (
            TestClient(build_app(node_a)) as a,
            TestClient(build_app(node_b)) as b,
            TestClient(build_app(node_c)) as c,
        ):
            urls = initiate(a)
            refused = c.put(urls["upload_url"], content=png_bytes(colour=BLUE))
            assert refused.status_code == 401, refused.text  # another secret: not our signature
            put = b.put(urls["upload_url"], content=png_bytes(colour=BLUE))
            assert put.status_code == 200, put.text
            for node in (a, b):
                answer = edit(node, urls["file_url"])
                assert answer.status_code == 200, answer.text
                assert centre_colour(answer.json()) == BLUE
            assert c.get(urls["file_url"]).content == png_bytes(colour=BLUE)
    finally:
        worker.worker.stop()
        for parts in (worker, node_a, node_b, node_c):
            parts.close()
