"""The OpenAPI document speaks fal's schema names, defaults and ranges (§13), and declares every
status code, content type, body and header each route answers (#12)."""

from __future__ import annotations

from typing import Any

import pytest
from service_helpers import MakeService, Service
from starlette.testclient import TestClient

from service.endpoints import ENDPOINTS, FLASH_EDIT
from service.routes.run import operation_id
from service.schema import APP_ID, ENDPOINT_ID

REF = "#/components/schemas/"


@pytest.fixture
def spec(service: Service) -> dict[str, Any]:
    response = service.client.get("/openapi.json")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    resolved: dict[str, Any] = spec["components"]["schemas"][name]
    return resolved


def test_input_schema(spec: dict[str, Any]) -> None:
    schema = spec["components"]["schemas"]["Flux2FlashEditInput"]
    props = schema["properties"]
    assert set(props) == {
        "prompt",
        "image_urls",
        "guidance_scale",
        "seed",
        "image_size",
        "num_images",
        "enable_prompt_expansion",
        "sync_mode",
        "enable_safety_checker",
        "output_format",
    }
    assert sorted(schema["required"]) == ["image_urls", "prompt"]
    defaults = {name: prop.get("default") for name, prop in props.items() if "default" in prop}
    assert defaults.pop("seed", None) is None  # random when absent
    assert defaults == {
        "guidance_scale": 2.5,
        "image_size": "square_hd",
        "num_images": 1,
        "output_format": "png",
        "enable_safety_checker": True,
        "sync_mode": False,
        "enable_prompt_expansion": False,
    }
    assert (props["guidance_scale"]["minimum"], props["guidance_scale"]["maximum"]) == (0, 20)
    assert props["guidance_scale"]["type"] == "number"
    assert (props["num_images"]["minimum"], props["num_images"]["maximum"]) == (1, 4)
    assert props["num_images"]["type"] == "integer"
    assert props["output_format"]["enum"] == ["jpeg", "png", "webp"]
    assert props["prompt"]["type"] == "string"
    assert props["image_urls"]["type"] == "array"
    assert props["image_urls"]["items"]["type"] == "string"
    seed_types = {option.get("type") for option in props["seed"].get("anyOf", [props["seed"]])}
    assert "integer" in seed_types
    for name in ("enable_prompt_expansion", "sync_mode", "enable_safety_checker"):
        assert props[name]["type"] == "boolean"


def test_image_size_schema(spec: dict[str, Any]) -> None:
    options = spec["components"]["schemas"]["Flux2FlashEditInput"]["properties"]["image_size"]
    resolved = [_resolve(spec, option) for option in options["anyOf"]]
    objects = [o for o in resolved if o.get("title") == "ImageSize"]
    assert len(objects) == 1
    image_size = objects[0]
    for side in ("width", "height"):
        prop = image_size["properties"][side]
        assert prop["type"] == "integer"
        assert (prop["minimum"], prop["maximum"]) == (512, 2048)
    presets = [o for o in resolved if "enum" in o]
    assert len(presets) == 1
    assert set(presets[0]["enum"]) == {
        "square_hd",
        "square",
        "portrait_4_3",
        "portrait_16_9",
        "landscape_4_3",
        "landscape_16_9",
    }


def test_output_schema(spec: dict[str, Any]) -> None:
    schema = spec["components"]["schemas"]["Flux2FlashEditOutput"]
    props = schema["properties"]
    assert set(props) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert sorted(schema["required"]) == sorted(props)
    image = _resolve(spec, props["images"]["items"])
    assert {"url", "content_type", "file_name", "file_size", "width", "height"} <= set(
        image["properties"]
    )
    assert image.get("required") == ["url"]
    assert props["has_nsfw_concepts"]["items"]["type"] == "boolean"
    assert props["seed"]["type"] == "integer"
    assert props["timings"]["additionalProperties"]["type"] == "number"


def test_operations_reference_the_schemas(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    submit = paths[f"/queue/{ENDPOINT_ID}"]["post"]
    schema = submit["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Flux2FlashEditInput"}
    run = paths[f"/{ENDPOINT_ID}"]["post"]
    run_schema = run["requestBody"]["content"]["application/json"]["schema"]
    assert run_schema == {"$ref": "#/components/schemas/Flux2FlashEditInput"}
    run_out = run["responses"]["200"]["content"]["application/json"]["schema"]
    assert run_out == {"$ref": "#/components/schemas/Flux2FlashEditOutput"}
    for prefix in (APP_ID, ENDPOINT_ID):
        base = f"/queue/{prefix}/requests/{{request_id}}"
        assert "get" in paths[f"{base}/status"]
        assert "get" in paths[f"{base}/status/stream"]
        assert "put" in paths[f"{base}/cancel"]
        result = paths[base]["get"]["responses"]["200"]["content"]["application/json"]
        output = "Flux2Output" if prefix == APP_ID else "Flux2FlashEditOutput"
        assert result["schema"] == {"$ref": f"#/components/schemas/{output}"}
        params = {p["name"] for p in paths[f"{base}/status"]["get"].get("parameters", [])}
        assert {"request_id", "logs"} <= params


def test_operation_ids_are_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_docs_page(service: Service) -> None:
    client: TestClient = service.client
    response = client.get("/docs")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/openapi.json" in response.text


# -- every answer is declared (#12) ------------------------------------------------------------

OPERATIONS = {
    "run": ("post", f"/{ENDPOINT_ID}"),
    "submit": ("post", f"/queue/{ENDPOINT_ID}"),
    **{
        f"{name}{suffix}": (method, f"/queue/{prefix}/requests/{{request_id}}{tail}")
        for prefix, suffix in ((APP_ID, ""), (ENDPOINT_ID, "_subpath"))
        for name, method, tail in (
            ("status", "get", "/status"),
            ("status_stream", "get", "/status/stream"),
            ("result", "get", ""),
            ("cancel", "put", "/cancel"),
        )
    },
    "file": ("get", "/files/{owner}/{name}"),
    "health": ("get", "/health"),
    "ready": ("get", "/ready"),
    "metrics": ("get", "/metrics"),
    "upload_initiate": ("post", "/storage/upload/initiate"),
    "upload_initiate_multipart": ("post", "/storage/upload/initiate-multipart"),
    "upload_complete": ("post", "/storage/upload/{upload_id}/complete"),
    "upload_put": ("put", "/storage/upload/{upload_id}"),
    "upload_put_part": ("put", "/storage/upload/{upload_id}/{part}"),
    "upload_token": ("post", "/storage/auth/token"),
    "files_upload": ("post", "/files/upload"),
    "files_upload_multipart": ("post", "/files/upload/multipart"),
    "files_upload_complete": ("post", "/uploads/{upload_id}/multipart/{multipart_id}/complete"),
    "files_upload_part": ("put", "/uploads/{upload_id}/multipart/{multipart_id}/{part}"),
    "upload": ("get", "/uploads/{upload_id}"),
    "openai_models": ("get", "/v1/models"),
    "openai_model": ("get", "/v1/models/{name}"),
    "openai_images_edits": ("post", "/v1/images/edits"),
    "openai_images_generations": ("post", "/v1/images/generations"),
    # the rest of the FLUX.2 family: sync run, submit, and the request routes under its id
    **{
        f"{kind}_{endpoint.slug.replace('-', '_')}"
        if kind in ("run", "submit")
        else f"{kind}_{operation_id('subpath', endpoint)}": (method, path.format(id=endpoint.id))
        for endpoint in ENDPOINTS.values()
        if endpoint is not FLASH_EDIT
        for kind, method, path in (
            ("run", "post", "/{id}"),
            ("submit", "post", "/queue/{id}"),
            ("status", "get", "/queue/{id}/requests/{{request_id}}/status"),
            ("status_stream", "get", "/queue/{id}/requests/{{request_id}}/status/stream"),
            ("result", "get", "/queue/{id}/requests/{{request_id}}"),
            ("cancel", "put", "/queue/{id}/requests/{{request_id}}/cancel"),
        )
        # fal-ai/flux-2 is the app id itself: its request routes are the app's
        if kind in ("run", "submit") or endpoint.id != endpoint.app_id
    },  # fmt: skip
}
SIGNED = {"upload_complete", "upload_put", "upload_put_part"}
BEARER = {"files_upload", "files_upload_multipart", "files_upload_complete", "files_upload_part"}
OPENAI = {name for name, (_, path) in OPERATIONS.items() if path.startswith("/v1/")}
#: The operations that check the API key when keys are configured.
PROTECTED = {
    name
    for name, (_, path) in OPERATIONS.items()
    if path.startswith(("/fal", "/q", "/files/{", "/storage/upload/i", "/storage/auth", "/v1/"))
} | {"upload"}
OUTCOMES = {"200", "422", "499", "500", "503", "504"}  # what a finished job answers with
KEY = "openapi-test-key"


def _operation(spec: dict[str, Any], name: str) -> dict[str, Any]:
    method, path = OPERATIONS[name]
    operation: dict[str, Any] = spec["paths"][path][method]
    assert operation["operationId"] == name
    return operation


def _statuses(spec: dict[str, Any], name: str) -> set[str]:
    return set(_operation(spec, name)["responses"])


def _schema_of(spec: dict[str, Any], name: str, status: str) -> Any:
    return _operation(spec, name)["responses"][status]["content"]["application/json"]["schema"]


@pytest.fixture
def keyed_spec(make_service: MakeService) -> dict[str, Any]:
    service = make_service(settings={"api_keys": KEY})
    body: dict[str, Any] = service.client.get("/openapi.json").json()
    return body


def test_every_operation_is_documented(spec: dict[str, Any]) -> None:
    documented = {op["operationId"] for item in spec["paths"].values() for op in item.values()}
    assert documented == set(OPERATIONS)


def test_every_route_declares_every_status_it_answers(spec: dict[str, Any]) -> None:
    assert _statuses(spec, "run") == OUTCOMES | {"413", "429"}
    assert _statuses(spec, "submit") == {"200", "413", "422", "429", "500", "503"}
    for suffix in ("", "_subpath"):
        assert _statuses(spec, f"status{suffix}") == {"200", "202", "404", "500", "503"}
        assert _statuses(spec, f"status_stream{suffix}") == {"200", "404", "500", "503"}
        assert _statuses(spec, f"result{suffix}") == OUTCOMES | {"400", "404"}
        assert _statuses(spec, f"cancel{suffix}") == {"202", "400", "404", "500", "503"}
    assert _statuses(spec, "file") == {"200", "404", "500", "503"}
    # storage: the signed URL and the upload token are checked with or without API keys
    assert _statuses(spec, "upload_initiate") == {"200", "413", "422", "500"}
    assert _statuses(spec, "upload_initiate_multipart") == {"200", "413", "422", "500", "503"}
    assert _statuses(spec, "upload_token") == {"200", "500"}
    stored = {"200", "401", "404", "413", "422", "500", "503"}
    for name in ("upload_complete", "upload_put", "upload_put_part"):
        assert _statuses(spec, name) == stored, name
    assert _statuses(spec, "files_upload") == stored - {"404"}
    assert _statuses(spec, "files_upload_multipart") == {"200", "401", "500", "503"}
    for name in ("files_upload_complete", "files_upload_part"):
        assert _statuses(spec, name) == stored, name
    assert _statuses(spec, "upload") == {"200", "404", "500", "503"}
    # OpenAI
    assert _statuses(spec, "openai_models") == {"200", "500"}
    assert _statuses(spec, "openai_model") == {"200", "404", "500"}
    images = {"200", "400", "404", "413", "429", "499", "500", "503", "504"}
    assert _statuses(spec, "openai_images_edits") == images
    assert _statuses(spec, "openai_images_generations") == images
    assert _statuses(spec, "ready") == {"200", "503", "500"}
    for name in ("health", "metrics"):
        assert _statuses(spec, name) == {"200", "500"}
    # FastAPI's own 422 (its parameters cannot fail) is gone, and so is its error schema
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_401_and_the_key_scheme_only_with_api_keys(
    spec: dict[str, Any], keyed_spec: dict[str, Any]
) -> None:
    proofs = {"SignedUploadUrl": SIGNED, "UploadToken": BEARER}  # checked with or without keys
    for name in set(OPERATIONS) - SIGNED - BEARER:
        assert "401" not in _statuses(spec, name), name
        assert "security" not in _operation(spec, name), name
    assert set(spec["components"]["securitySchemes"]) == set(proofs)
    signed = spec["components"]["securitySchemes"]["SignedUploadUrl"]
    assert (signed["type"], signed["in"], signed["name"]) == ("apiKey", "query", "token")
    schemes = keyed_spec["components"]["securitySchemes"]
    assert set(schemes) == set(proofs) | {"FalKey", "OpenAIKey"}
    scheme = schemes["FalKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")
    assert (schemes["OpenAIKey"]["type"], schemes["OpenAIKey"]["scheme"]) == ("http", "bearer")
    for document in (spec, keyed_spec):
        for proof, names in proofs.items():
            for name in names:
                assert _operation(document, name)["security"] == [{proof: []}], name
                assert _schema_of(document, name, "401") == {"$ref": f"{REF}FalError"}
    for name in OPERATIONS:
        protected = name in PROTECTED
        if name in SIGNED | BEARER:
            assert not protected
            continue
        assert ("401" in _statuses(keyed_spec, name)) is protected, name
        scheme_name = "OpenAIKey" if name in OPENAI else "FalKey"
        security = _operation(keyed_spec, name).get("security")
        assert (security == [{scheme_name: []}]) is protected, name
        if protected:
            answer = _operation(keyed_spec, name)["responses"]["401"]
            assert answer["headers"]["WWW-Authenticate"]["required"] is True
            body = "OpenAIErrorBody" if name in OPENAI else "FalError"
            assert _schema_of(keyed_spec, name, "401") == {"$ref": f"{REF}{body}"}


def test_every_answer_carries_the_request_id_header(keyed_spec: dict[str, Any]) -> None:
    for name in OPERATIONS:
        for status, answer in _operation(keyed_spec, name)["responses"].items():
            header = answer["headers"]["x-fal-request-id"]
            assert header["required"] is True, (name, status)
            assert header["schema"] == {"type": "string"}


def test_error_bodies_are_fals(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    problems = _resolve(spec, schemas["ValidationErrors"]["properties"]["detail"]["items"])
    assert sorted(problems["required"]) == ["loc", "msg", "type", "url"]
    assert set(problems["properties"]) == {"loc", "msg", "type", "url", "ctx", "input"}
    assert problems["properties"]["ctx"]["type"] == "object"  # absent or an object, never null
    error = schemas["FalError"]
    assert error["required"] == ["detail"]
    assert error["properties"]["detail"]["type"] == "string"
    assert error["properties"]["error_type"]["type"] == "string"
    not_found = schemas["QueueNotFound"]
    assert not_found["properties"]["status"]["const"] == "NOT_FOUND"
    for name in ("run", "submit", "result"):
        assert _schema_of(spec, name, "422") == {"$ref": f"{REF}ValidationErrors"}
    for name in ("run", "submit"):
        assert _schema_of(spec, name, "413") == {"$ref": f"{REF}FalError"}
        assert _schema_of(spec, name, "429") == {"$ref": f"{REF}FalError"}
        assert _operation(spec, name)["responses"]["429"]["headers"]["Retry-After"]["required"]
    for name in ("status", "status_stream", "result", "cancel"):
        assert _schema_of(spec, name, "404") == {"$ref": f"{REF}QueueNotFound"}
    for status in ("499", "500", "503", "504"):
        assert _schema_of(spec, "run", status) == {"$ref": f"{REF}FalError"}
        assert _schema_of(spec, "result", status) == {"$ref": f"{REF}FalError"}
    assert _schema_of(spec, "result", "400") == {"$ref": f"{REF}FalError"}


def test_queue_bodies(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    submitted = _resolve(spec, _schema_of(spec, "submit", "200"))
    assert set(submitted["required"]) == {
        "status",
        "request_id",
        "gateway_request_id",
        "response_url",
        "status_url",
        "cancel_url",
        "queue_position",
    }
    assert set(_operation(spec, "submit")["responses"]["200"]["links"]) == {
        "status",
        "status_stream",
        "result",
        "cancel",
    }
    assert _resolve(spec, submitted["properties"]["status"])["enum"] == [
        "IN_QUEUE",
        "IN_PROGRESS",
        "COMPLETED",
    ]
    pending = _resolve(spec, _schema_of(spec, "status", "202"))
    assert pending["properties"]["status"]["enum"] == ["IN_QUEUE", "IN_PROGRESS"]
    assert "queue_position" in pending["properties"]
    completed = _resolve(spec, _schema_of(spec, "status", "200"))
    assert completed["properties"]["status"]["const"] == "COMPLETED"
    assert {"metrics", "error", "error_type"} <= set(completed["properties"])
    for body in (pending, completed):
        assert "logs" in body["required"]  # a list, or null without ?logs=1
        log = _resolve(spec, body["properties"]["logs"]["anyOf"][0]["items"])
        assert set(log["required"]) == {"message", "level", "source", "timestamp"}
    cancelled = _resolve(spec, _schema_of(spec, "cancel", "202"))
    assert cancelled["properties"]["status"]["const"] == "CANCELLATION_REQUESTED"
    refused = _resolve(spec, _schema_of(spec, "cancel", "400"))
    assert refused["properties"]["status"]["const"] == "ALREADY_COMPLETED"
    assert schemas["Readiness"]["properties"]["worker"]["anyOf"][0]["type"] == "string"


def test_content_types(spec: dict[str, Any]) -> None:
    def content(name: str, status: str = "200") -> dict[str, Any]:
        found: dict[str, Any] = _operation(spec, name)["responses"][status]["content"]
        return found

    for suffix in ("", "_subpath"):
        stream = content(f"status_stream{suffix}")
        assert set(stream) == {"text/event-stream"}
        event = stream["text/event-stream"]["itemSchema"]
        data = event["properties"]["data"]
        assert data["contentMediaType"] == "application/json"
        assert data["contentSchema"]["anyOf"] == [
            {"$ref": f"{REF}QueuePending"},
            {"$ref": f"{REF}QueueCompleted"},
        ]
        assert set(content(f"status_stream{suffix}", "404")) == {"application/json"}
    assert set(content("file")) == {"image/png", "image/jpeg", "image/webp"}
    assert set(content("file", "404")) == {"application/json"}
    assert set(content("metrics")) == {"text/plain"}
    assert set(content("upload")) == {"image/png", "image/jpeg", "image/webp", "image/gif"}
    for name in ("openai_images_edits", "openai_images_generations"):
        assert set(content(name)) == {"application/json", "text/event-stream"}
        event = content(name)["text/event-stream"]["itemSchema"]
        assert event["required"] == ["event", "data"]
        assert event["properties"]["data"]["contentSchema"]["anyOf"] == [
            {"$ref": f"{REF}PartialImageEvent"},
            {"$ref": f"{REF}CompletedImageEvent"},
            {"$ref": f"{REF}ErrorEvent"},
        ]
    for name in OPERATIONS:  # errors are JSON everywhere, OpenAI's on its routes
        assert set(content(name, "500")) == {"application/json"}, name
        body = "OpenAIErrorBody" if name in OPENAI else "FalError"
        assert _schema_of(spec, name, "500") == {"$ref": f"{REF}{body}"}, name
    for name in OPENAI - {"openai_models"}:
        for status in _statuses(spec, name) - {"200"}:
            assert _schema_of(spec, name, status) == {"$ref": f"{REF}OpenAIErrorBody"}


def test_request_bodies(spec: dict[str, Any]) -> None:
    def body(name: str) -> dict[str, Any]:
        found: dict[str, Any] = _operation(spec, name)["requestBody"]["content"]
        return found

    form = body("openai_images_edits")["multipart/form-data"]["schema"]
    assert form["required"] == ["prompt"]
    assert {"image", "image[]", "mask", "prompt", "n", "size", "stream"} <= set(form["properties"])
    generation = body("openai_images_generations")["application/json"]["schema"]
    assert "prompt" in generation["required"] and "image" not in generation["properties"]
    for name in ("upload_put", "upload_put_part", "files_upload", "files_upload_part"):
        assert body(name) == {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
        }
    assert _operation(spec, "upload_initiate")["requestBody"]["required"] is False
    parts = body("upload_complete")["application/json"]["schema"]["properties"]["parts"]
    assert parts["items"] == {"$ref": f"{REF}Part"}  # its $defs moved to the components
    assert "Part" in spec["components"]["schemas"]


def test_entry_points_declare_their_headers_and_webhook(spec: dict[str, Any]) -> None:
    def parameters(name: str) -> dict[tuple[str, str], dict[str, Any]]:
        return {(p["in"], p["name"]): p for p in _operation(spec, name).get("parameters", [])}

    run, submit = parameters("run"), parameters("submit")
    assert set(run) == {
        ("header", "X-Fal-Request-Timeout"),
        ("header", "X-Fal-Queue-Priority"),
        ("header", "X-Flux2-Previews"),
    }
    assert set(submit) == set(run) | {("query", "fal_webhook")}
    assert submit[("header", "X-Fal-Queue-Priority")]["schema"]["enum"] == ["normal", "low"]
    assert all(not p["required"] for p in submit.values())
