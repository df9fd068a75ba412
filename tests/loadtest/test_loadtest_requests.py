"""What is sent (mixes, request files), where (targets), and how one request is recorded:
the official fal-client against a scriptable stub server over plain http."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from loadtest_helpers import Reply, StubServer
from PIL import Image

from core.errors import ConfigError
from service.loadtest.mixes import (
    EDIT_ENDPOINT,
    MIXES,
    T2I_ENDPOINT,
    RequestSource,
    load_request_file,
    parse_image_size,
    parse_mix,
    reference_uri,
)
from service.loadtest.request import FalSender, Mode, Ticket, classify_error
from service.loadtest.sample import Outcome, Phase, Sample
from service.loadtest.target import HOSTED_QUEUE_URL, HOSTED_RUN_URL, RetryCounter, parse_target
from service.loadtest.target import pointed_at as point


def _decode(uri: str) -> Image.Image:
    header, _, data = uri.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_references_are_deterministic_1024_pngs_and_differ_by_index() -> None:
    first = reference_uri(0)
    assert _decode(first).size == (1024, 1024)
    reference_uri.cache_clear()
    assert reference_uri(0) == first  # drawn again, byte for byte the same
    assert reference_uri(1) != first


def test_built_in_mixes() -> None:
    def spec(name: str) -> dict[str, object]:
        made = RequestSource(mixes=[(MIXES[name], 1.0)], seed=40).spec(2)
        assert made.mix == name
        return {"endpoint": made.endpoint, **made.arguments}

    one, three, t2i, four = spec("edit-1ref"), spec("edit-3ref"), spec("t2i"), spec("edit-4img")
    assert one["endpoint"] == three["endpoint"] == four["endpoint"] == EDIT_ENDPOINT
    assert len(one["image_urls"]) == 1 and len(three["image_urls"]) == 3  # type: ignore[arg-type]
    assert len(set(three["image_urls"])) == 3  # type: ignore[arg-type]
    assert t2i["endpoint"] == T2I_ENDPOINT and "image_urls" not in t2i
    assert four["num_images"] == 4 and "num_images" not in one
    assert one["seed"] == 42  # seed + index


def test_weighted_mixes_are_reproducible_and_use_every_mix() -> None:
    source = RequestSource(mixes=parse_mix("edit-1ref:3,t2i:1"), image_size="square", seed=3)
    names = [source.spec(i).mix for i in range(200)]
    assert names == [source.spec(i).mix for i in range(200)]
    assert 110 < names.count("edit-1ref") < 190 and names.count("t2i") > 10
    assert all(source.spec(i).arguments["image_size"] == "square" for i in range(5))
    with pytest.raises(ValueError, match="unknown mix"):
        parse_mix("edit-9ref")
    with pytest.raises(ValueError, match="positive"):
        parse_mix("t2i:0")


def test_request_files_and_sizes(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(
        '# a comment\n{"prompt": "a", "image_urls": ["https://x/a.png"]}\n\n'
        '{"endpoint": "fal-ai/flux-2/flash", "input": {"prompt": "b"}}\n'
    )
    source = RequestSource(lines=load_request_file(path), extra={"output_format": "jpeg"})
    first, second, third = (source.spec(i) for i in range(3))
    assert (first.endpoint, first.mix, first.arguments["prompt"]) == (EDIT_ENDPOINT, "file:1", "a")
    assert (second.endpoint, second.arguments) == (
        T2I_ENDPOINT,
        {"prompt": "b", "output_format": "jpeg"},
    )
    assert third.arguments == first.arguments  # round and round
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="JSON object"):
        load_request_file(path)
    assert parse_image_size("square") == "square"
    assert parse_image_size("768x512") == {"width": 768, "height": 512}
    with pytest.raises(ValueError, match="image size"):
        parse_image_size("huge")


def test_targets_differ_only_in_the_host() -> None:
    hosted = parse_target("fal")
    assert (hosted.run_url, hosted.queue_url, hosted.hosted) == (
        HOSTED_RUN_URL,
        HOSTED_QUEUE_URL,
        True,
    )
    local = parse_target("http://127.0.0.1:8000/")
    assert (local.run_url, local.queue_url) == (
        "http://127.0.0.1:8000/",
        "http://127.0.0.1:8000/queue/",
    )
    prefixed = parse_target("https://gpu.example.com/flux")
    assert prefixed.queue_url == "https://gpu.example.com/flux/queue/"
    for bad in ("127.0.0.1:8000", "ftp://x", "http://x/?a=1"):
        with pytest.raises(ConfigError):
            parse_target(bad)


def test_pointing_sets_and_restores_fal_clients_urls() -> None:
    import fal_client.client as module

    before = (module.RUN_URL_FORMAT, module.QUEUE_URL_FORMAT)
    with point(parse_target("http://127.0.0.1:9")):
        assert module.RUN_URL_FORMAT == "http://127.0.0.1:9/"
        assert module.QUEUE_URL_FORMAT == "http://127.0.0.1:9/queue/"
    assert before == (module.RUN_URL_FORMAT, module.QUEUE_URL_FORMAT)


def _send_one(stub: StubServer, *, index: int = 0) -> Sample:
    import fal_client

    sender = FalSender(fal_client.SyncClient(key="test"), Mode.SYNC)
    source = RequestSource(mixes=[(MIXES["edit-1ref"], 1.0)], image_size="square")
    with point(parse_target(stub.origin)), RetryCounter().installed():
        return sender(Ticket(index, Phase.MEASURED, source.spec(index)))


def test_a_sync_request_is_timed_and_measured(stub: StubServer) -> None:
    sample = _send_one(stub)
    assert stub.paths == ["/fal-ai/flux-2/flash/edit"]
    assert sample.outcome is Outcome.OK
    assert sample.latency_s > 0
    assert sample.server_timings == {"inference": 0.25}
    assert (sample.images, sample.image_bytes, sample.retries) == (1, 1234, 0)
    assert sample.request_bytes > 10_000  # a 1024x1024 reference is inside
    assert sample.response_bytes == len(json.dumps(Reply().body, separators=(",", ":")))


def test_the_clients_own_retries_are_counted_never_hidden(stub: StubServer) -> None:
    stub.script.extend(
        [
            Reply(status=429, body={"detail": "slow down"}, headers={}),
            Reply(status=429, body={"detail": "slow down"}, headers={}),
        ]
    )
    sample = _send_one(stub)
    assert len(stub.paths) == 3  # fal-client tried three times by itself
    assert sample.outcome is Outcome.OK and sample.retries == 2


def test_errors_are_samples_with_a_type(stub: StubServer) -> None:
    detail = [{"loc": ["body", "image_urls", 0], "msg": "bad", "type": "image_load_error"}]
    stub.script.append(Reply(status=422, body={"detail": detail}))
    stub.script.append(Reply(status=503, body={"detail": "busy", "error_type": "runner_busy"}))
    first, second = _send_one(stub), _send_one(stub, index=1)
    assert (first.outcome, first.error_type) == (Outcome.ERROR, "http_422:image_load_error")
    assert second.error_type == "http_503:runner_busy"
    assert first.latency_s is not None and first.retries == 0


def test_classify_client_side_failures() -> None:
    import httpx

    assert classify_error(httpx.ConnectError("refused"))[0] == "connection_error"
    assert classify_error(httpx.ReadTimeout("slow"))[0] == "timeout"
    assert classify_error(KeyError("request_id")) == ("KeyError", "'request_id'")


def test_the_load_test_imports_no_torch() -> None:
    """It is a client: no engine, no torch, even with the whole command line loaded."""
    code = (
        "import sys\n"
        "import service.loadtest.cli, service.loadtest.request, service.loadtest.report\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'pipelines') if m in sys.modules))\n"
        "import service.cli\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "[]"]
