"""Hostile requests through the HTTP API: every one gets fal's error shape, none breaks the server.

One in-process app (fake engine, in-memory queue, local files) serves the whole module. Image URLs
point at two loopback servers: 127.0.0.1 (internal: the SSRF guard must never contact it) and
127.0.0.2 (allowed by the operator's ``FetchPolicy``), which serves hostile files and redirects.
After the table: no job is stuck, only successful jobs left files, and the server still works.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image
from security_helpers import (
    BOMB_PNG,
    PNG_URI,
    RUN_PATH,
    SUBMIT_PATH,
    Servers,
    Service,
    assert_fal_problems,
    data_uri,
    encode,
    make_service,
    request_path,
)
from ssrf_spellings import INTERNAL_URLS, refusal

from service.inputs import FetchPolicy

MAX_BODY = 2 * 1024 * 1024
BASE: dict[str, Any] = {
    "prompt": "make it #FF5733",
    "image_urls": [PNG_URI],
    "image_size": "square",
    "seed": 7,
}
FDE = "file_download_error"
URL0 = ["body", "image_urls", 0]


def edit(**fields: Any) -> dict[str, Any]:
    return {**BASE, **fields}


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in BASE.items() if k != name}


def urls(*items: str) -> dict[str, Any]:
    return edit(image_urls=list(items))


def raw(*members: str) -> bytes:
    """BASE as JSON text with ``members`` (raw JSON text, e.g. ``'"seed": NaN'``) appended."""
    text = json.dumps(BASE)
    return (text[:-1] + "".join(f", {member}" for member in members) + "}").encode()


JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Case:
    body: Any  # a JSON value, or bytes sent as they are
    status: int = 422
    type: str | None = None  # the fal error type expected among the problems
    loc: tuple[Any, ...] = ()  # where (a prefix of the problem's loc)
    queue: bool = False  # also through submit -> result
    match: str | None = None  # a text one of the problems' messages must contain
    content_type: str | None = JSON_TYPE  # of a bytes body (None: no Content-Type header)
    at_submit: bool = False  # the queue refuses it at submit (not JSON): no job is made


def case(
    id: str,  # noqa: A002 - pytest's word
    body: Any,
    status: int = 422,
    type: str | None = None,  # noqa: A002
    loc: list[Any] | None = None,
    *,
    queue: bool = False,
    match: str | None = None,
    content_type: str | None = JSON_TYPE,
) -> Any:
    return pytest.param(
        Case(body, status, type, tuple(loc or ()), queue, match, content_type), id=id
    )


def not_json(
    id: str,  # noqa: A002
    body: bytes,
    match: str,
    *,
    type: str = "json_invalid",  # noqa: A002
    content_type: str | None = JSON_TYPE,
) -> Any:
    """A body that is not (strict) JSON: fal's 422 at ``body``, from the sync run and at
    submit alike (no job is made)."""
    expected = Case(body, 422, type, ("body",), True, match, content_type, at_submit=True)
    return pytest.param(expected, id=id)


CASES = [
    # -- accepted ---------------------------------------------------------------------------
    case("ok-data-uri", edit(), 200, queue=True),
    case("ok-allowed-url", urls("{allowed}/ok.png"), 200, queue=True),
    case("gif-accepted", urls("{allowed}/anim.gif"), 200, queue=True),
    case(
        "five-urls-only-four-used",  # the fifth (internal) would be refused if it were fetched
        urls(PNG_URI, "{allowed}/ok.png", PNG_URI, "{allowed}/anim.gif", "{private}/fifth.png"),
        200,
        queue=True,
    ),
    case("edge-values", edit(guidance_scale=20, num_images=4, output_format="webp"), 200),
    case("unknown-fields-ignored", edit(evil="x" * 1000, __proto__={"admin": True}), 200),
    # -- SSRF: every spelling is refused by the guard itself, not by a failed connection -----
    *(
        case(
            f"ssrf-{name}",
            urls(url.replace("{port}", "{private_port}")),
            422,
            FDE,
            URL0,
            queue=name in ("loopback", "private-10", "link-local-metadata", "6to4-metadata"),
            match=refusal(name),
        )
        for name, url in INTERNAL_URLS
    ),
    case("ssrf-redirect-to-private", urls("{allowed}/to-private"), 422, FDE, URL0, queue=True),
    case("ssrf-redirect-to-metadata", urls("{allowed}/to-metadata"), 422, FDE, URL0),
    case("ssrf-redirect-to-localhost", urls("{allowed}/to-localhost"), 422, FDE, URL0),
    case(
        "ssrf-second-image",
        urls(PNG_URI, "http://10.0.0.1/x.png"),
        422,
        FDE,
        ["body", "image_urls", 1],
        queue=True,
    ),
    # -- other URLs -------------------------------------------------------------------------
    case("http-404", urls("{allowed}/missing.png"), 422, FDE, URL0),
    case("http-500", urls("{allowed}/boom"), 422, FDE, URL0),
    case("scheme-file", urls("file:///etc/passwd"), 422, FDE, URL0, queue=True),
    case("scheme-ftp", urls("ftp://example.com/a.png"), 422, FDE, URL0),
    case("scheme-gopher", urls("gopher://127.0.0.1:6379/_FLUSHALL"), 422, FDE, URL0),
    case("plain-path", urls("/etc/passwd"), 422, FDE, URL0),
    case("malformed-host", urls("http://a..b/x.png"), 422, FDE, URL0),
    case("malformed-ipv6", urls("http://[v1.x]/x.png"), 422, FDE, URL0),
    # -- hostile files ----------------------------------------------------------------------
    case(
        "html-not-an-image",
        urls("{allowed}/page.html"),
        422,
        "unsupported_image_format",
        URL0,
        queue=True,
    ),
    case("bmp-unsupported", urls("{allowed}/image.bmp"), 422, "unsupported_image_format", URL0),
    case(
        "truncated-png", urls("{allowed}/truncated.png"), 422, "image_load_error", URL0, queue=True
    ),
    case("png-bomb", urls("{allowed}/bomb.png"), 422, "image_too_large", URL0, queue=True),
    case("png-bomb-data-uri", urls(data_uri(BOMB_PNG)), 422, "image_too_large", URL0),
    case("one-pixel", urls("{allowed}/tiny.png"), 422, "image_too_small", URL0, queue=True),
    case("bad-base64", urls("data:image/png;base64,abc"), 422, "image_load_error", URL0),
    case("data-uri-no-comma", urls("data:image/png;base64"), 422, "image_load_error", URL0),
    case(
        "data-uri-text",
        urls("data:text/plain;base64,aGVsbG8="),
        422,
        "unsupported_image_format",
        URL0,
        queue=True,
    ),
    # -- out of range -----------------------------------------------------------------------
    case(
        "guidance-negative",
        edit(guidance_scale=-1),
        422,
        "greater_than_equal",
        ["body", "guidance_scale"],
        queue=True,
    ),
    case(
        "guidance-21", edit(guidance_scale=21), 422, "less_than_equal", ["body", "guidance_scale"]
    ),
    case("num-images-0", edit(num_images=0), 422, "greater_than_equal", ["body", "num_images"]),
    case(
        "num-images-5",
        edit(num_images=5),
        422,
        "less_than_equal",
        ["body", "num_images"],
        queue=True,
    ),
    case(
        "width-511",
        edit(image_size={"width": 511, "height": 512}),
        422,
        "greater_than_equal",
        ["body", "image_size", "ImageSize", "width"],
    ),
    case(
        "height-2049",
        edit(image_size={"width": 512, "height": 2049}),
        422,
        "less_than_equal",
        ["body", "image_size", "ImageSize", "height"],
    ),
    # -- unknown enum values ----------------------------------------------------------------
    case(
        "output-format-gif",
        edit(output_format="gif"),
        422,
        "literal_error",
        ["body", "output_format"],
        queue=True,
    ),
    case("image-size-huge", edit(image_size="huge"), 422, "literal_error", ["body", "image_size"]),
    # -- a wrong type for every field -------------------------------------------------------
    case("type-prompt", edit(prompt=5), 422, "string_type", ["body", "prompt"], queue=True),
    case("type-image-urls", edit(image_urls="x"), 422, "list_type", ["body", "image_urls"]),
    case("type-image-url-item", edit(image_urls=[5]), 422, "string_type", URL0),
    case(
        "type-guidance",
        edit(guidance_scale="high"),
        422,
        "float_parsing",
        ["body", "guidance_scale"],
    ),
    case("type-seed", edit(seed="abc"), 422, "int_parsing", ["body", "seed"]),
    case(
        "type-image-size",
        edit(image_size=7),
        422,
        "model_attributes_type",
        ["body", "image_size"],
    ),
    case("type-num-images", edit(num_images=1.5), 422, "int_from_float", ["body", "num_images"]),
    case(
        "type-prompt-expansion",
        edit(enable_prompt_expansion="maybe"),
        422,
        "bool_parsing",
        ["body", "enable_prompt_expansion"],
    ),
    case("type-sync-mode", edit(sync_mode=[]), 422, "bool_type", ["body", "sync_mode"]),
    case(
        "type-safety-checker",
        edit(enable_safety_checker={}),
        422,
        "bool_type",
        ["body", "enable_safety_checker"],
    ),
    case(
        "type-output-format", edit(output_format=3), 422, "literal_error", ["body", "output_format"]
    ),
    # -- prompt and image_urls presence -----------------------------------------------------
    case("missing-prompt", without("prompt"), 422, "missing", ["body", "prompt"], queue=True),
    case("empty-prompt", edit(prompt=""), 422, "string_too_short", ["body", "prompt"]),
    case(
        "blank-prompt", edit(prompt="   "), 422, "string_too_short", ["body", "prompt"], queue=True
    ),
    case(
        "prompt-20000-chars",
        edit(prompt="x" * 20_000),
        422,
        "string_too_long",
        ["body", "prompt"],
        queue=True,
    ),
    case("missing-image-urls", without("image_urls"), 422, "missing", ["body", "image_urls"]),
    case(
        "empty-image-urls",
        edit(image_urls=[]),
        422,
        "too_short",
        ["body", "image_urls"],
        queue=True,
    ),
    case("null-image-urls", edit(image_urls=None), 422, "list_type", ["body", "image_urls"]),
    # -- not an object ----------------------------------------------------------------------
    case("non-json", b'{"prompt": "x", image_urls: [}', 422, "json_invalid", ["body"]),
    case("json-array", [BASE], 422, "model_attributes_type", ["body"], queue=True),
    case("json-string", "make it red", 422, "model_attributes_type", ["body"]),
    case("oversized-body", edit(image_urls=[data_uri(b"\0" * (MAX_BODY + 1024))]), 413, queue=True),
    # -- odd JSON: what Python's json module accepts but JSON is not (strict RFC 8259) ------
    not_json("nan", raw('"guidance_scale": NaN'), "NaN is not a JSON value"),
    not_json("infinity", raw('"guidance_scale": Infinity'), "Infinity is not a JSON value"),
    not_json("minus-infinity", raw('"num_images": -Infinity'), "-Infinity is not a JSON value"),
    not_json("nan-in-unknown-field", raw('"extra": [NaN]'), "NaN is not a JSON value"),
    not_json("float-overflow", raw('"guidance_scale": 1e400'), "1e400 is out of range"),
    not_json("duplicate-key", raw('"prompt": "other"'), "duplicate key 'prompt'"),
    not_json(
        "duplicate-nested-key",
        raw('"image_size": {"width": 512, "width": 1024, "height": 512}'),
        "duplicate key 'width'",
    ),
    not_json("nesting-100000", b"[" * 100_000 + b"]" * 100_000, "nested more than 32"),
    not_json("nesting-33", raw('"extra": ' + "[" * 33 + "]" * 33), "nested more than 32"),
    not_json("int-5000-digits", raw('"num_images": ' + "9" * 5000), "more than 1000 digits"),
    not_json(  # a Latin-1 body
        "invalid-utf8",
        raw('"prompt": "café"').replace("é".encode(), "é".encode("latin-1")),
        "not valid UTF-8",
    ),
    not_json("utf16", json.dumps(BASE).encode("utf-16"), "UTF-8"),
    not_json("lone-surrogate", raw('"extra": "\\ud800"'), "lone surrogate"),
    not_json("empty-body", b"", "Field required", type="missing"),
    # the body is read as JSON whatever its Content-Type (curl -d sends form-urlencoded)
    not_json(
        "form-urlencoded",
        b"prompt=x&image_urls=y",
        "(the body must be JSON, not 'application/x-www-form-urlencoded')",
        content_type="application/x-www-form-urlencoded",
    ),
    not_json(
        "multipart",
        b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--x--\r\n',
        "(the body must be JSON, not 'multipart/form-data; boundary=x')",
        content_type="multipart/form-data; boundary=x",
    ),
    case("json-as-form-urlencoded", raw(), 200, content_type="application/x-www-form-urlencoded"),
    case("json-as-text-plain", raw(), 200, content_type="text/plain"),
    case("no-content-type", raw(), 200, queue=True, content_type=None),
    case("json-charset", raw(), 200, content_type="application/json; charset=utf-8"),
    case("utf8-byte-order-mark", b"\xef\xbb\xbf" + raw(), 200, queue=True),
    case("surrogate-pair", json.dumps(edit(prompt="\U0001f3a8 paint it")).encode(), 200),
    # big integers that parse: refused by the schema, and rendered back in the error
    case("seed-100-digits", edit(seed=10**100), 422, "value_error", ["body", "seed"], queue=True),
    case(
        "num-images-40-digits",
        edit(num_images=10**40),
        422,
        "less_than_equal",
        ["body", "num_images"],
    ),
    case(
        "guidance-400-digits",
        edit(guidance_scale=10**400),
        422,
        "float_type",
        ["body", "guidance_scale"],
        queue=True,
    ),
]


@pytest.fixture(scope="module")
def service(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service, _ = make_service(
        tmp_path_factory.mktemp("hostile"),
        fetch_policy=FetchPolicy(allow=("127.0.0.2/32",)),
        max_body_bytes=MAX_BODY,
    )
    with service.client:
        yield service


def _fill(value: Any, servers: Servers) -> Any:
    """The case's body with the servers' addresses put in."""
    if isinstance(value, str):
        return (
            value.replace("{allowed}", servers.allowed.base)
            .replace("{private_port}", str(servers.private.port))
            .replace("{private}", servers.private.base)
        )
    if isinstance(value, list):
        return [_fill(item, servers) for item in value]
    if isinstance(value, dict):
        return {key: _fill(item, servers) for key, item in value.items()}
    return value


def _post(
    service: Service, path: str, body: Any, content_type: str | None = JSON_TYPE
) -> httpx.Response:
    if isinstance(body, bytes):
        headers = {} if content_type is None else {"content-type": content_type}
        return service.client.post(path, content=body, headers=headers)
    return service.client.post(path, json=body)


def _check(response: httpx.Response, expected: Case) -> None:
    if expected.status == 200:
        assert response.status_code == 200, response.text
        output = response.json()
        assert len(output["images"]) == expected_images(expected)
        assert all(image["width"] >= 512 for image in output["images"])
    elif expected.status == 413:
        assert response.status_code == 413, response.text
        assert response.json() == {
            "detail": f"Request body is larger than {MAX_BODY} bytes",
            "error_type": "request_too_large",
        }
        assert response.headers["x-fal-error-type"] == "request_too_large"
    else:
        assert expected.type is not None
        assert_fal_problems(response, expected.status, expected.type, list(expected.loc))
        if expected.match is not None:
            messages = [problem["msg"] for problem in response.json()["detail"]]
            assert any(expected.match in message for message in messages), messages


def expected_images(expected: Case) -> int:
    body = expected.body if isinstance(expected.body, dict) else BASE
    return int(body.get("num_images", 1))


@pytest.mark.parametrize("expected", CASES)
def test_sync_run(service: Service, servers: Servers, expected: Case) -> None:
    response = _post(service, RUN_PATH, _fill(expected.body, servers), expected.content_type)
    _check(response, expected)
    service.record(response.headers.get("x-fal-request-id"))


@pytest.mark.parametrize("expected", [c for c in CASES if c.values[0].queue])
def test_queue_submit_then_result(service: Service, servers: Servers, expected: Case) -> None:
    submitted = _post(service, SUBMIT_PATH, _fill(expected.body, servers), expected.content_type)
    if expected.status == 413 or expected.at_submit:  # refused before a job exists
        _check(submitted, expected)
        return
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    service.record(request_id)
    status = service.client.get(request_path(request_id, "/status"))
    assert status.status_code == 200
    assert status.json()["status"] == "COMPLETED"
    result = service.client.get(request_path(request_id))
    _check(result, expected)
    if expected.status != 200:
        assert status.json()["error_type"] == expected.type
        assert status.json()["error"]
        assert result.headers["x-fal-error-type"] == expected.type


@pytest.mark.parametrize("path", [RUN_PATH, SUBMIT_PATH], ids=["sync", "queue"])
def test_big_integers_are_rendered_back(service: Service, path: str) -> None:
    response = _post(service, path, edit(seed=10**100))
    request_id = response.headers["x-fal-request-id"]
    service.record(request_id)
    if path == SUBMIT_PATH:
        response = service.client.get(request_path(request_id))
    assert_fal_problems(response, 422, "value_error", ["body", "seed"])
    assert response.json()["detail"][0]["input"] == 10**100


def test_queue_refuses_non_json_at_submit(service: Service) -> None:
    response = _post(service, SUBMIT_PATH, b"{not json")
    assert_fal_problems(response, 422, "json_invalid", ["body"])


def _chunks(total: int) -> Iterator[bytes]:
    yield b'{"prompt": "x", "image_urls": ["'
    for _ in range(total // 65536 + 1):
        yield b"A" * 65536
    yield b'"]}'


@pytest.mark.parametrize("path", [RUN_PATH, SUBMIT_PATH], ids=["sync", "queue"])
def test_chunked_oversized_body_is_413(service: Service, path: str) -> None:
    """No Content-Length to refuse up front: the limit must hold while the body streams in."""
    response = service.client.post(
        path, content=_chunks(MAX_BODY + 1), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["error_type"] == "request_too_large"


# Orientation 6 plus a field whose type does not match its value: PIL reads it, then fails
# re-serialising the EXIF inside ImageOps.exif_transpose (struct.error).
HOSTILE_EXIF = bytes.fromhex(
    "4578696600004d4d002a000000080e02010300020000000463616d00011200030000000100063b000000e900"
)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_exif_is_not_a_server_error(service: Service) -> None:
    jpeg = encode(Image.new("RGB", (80, 80), (1, 2, 3)), "JPEG", exif=HOSTILE_EXIF)
    response = _post(service, RUN_PATH, urls(data_uri(jpeg, "image/jpeg")))
    service.record(response.headers.get("x-fal-request-id"))
    if response.status_code != 200:  # ignoring the EXIF or refusing the image are both fine
        assert_fal_problems(response, 422, "image_load_error", URL0)


def test_nothing_stuck_nothing_left_behind_still_serving(
    service: Service, servers: Servers
) -> None:
    assert len(service.jobs) >= 40
    assert any(service.jobs.values())
    assert not all(service.jobs.values())
    for job_id in service.jobs:  # every job that was made has completed
        view = service.queue.view(job_id)
        assert view is not None
        assert view.status.value == "COMPLETED"
    assert service.worker.held == set()
    assert service.worker.state.value == "ready"
    # files only for the jobs that succeeded, no half-written ones
    folders = {path.name for path in service.files.iterdir()}
    assert folders == {job_id for job_id, ok in service.jobs.items() if ok}
    for folder in service.files.iterdir():
        assert folder.is_dir()
        names = [path.name for path in folder.iterdir()]
        assert names
        assert not any(name.startswith(".") for name in names)
    # the internal server was never contacted, whatever the URL or redirect
    assert servers.private.hits == []
    # and the server still answers a valid request
    response = service.client.post(RUN_PATH, json=edit(prompt="still alive"))
    assert response.status_code == 200, response.text
    image_url = response.json()["images"][0]["url"]
    image = service.client.get(httpx.URL(image_url).path)
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size == (512, 512)
    assert service.client.get("/ready").json()["status"] == "ready"
