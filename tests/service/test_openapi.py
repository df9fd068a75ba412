"""The OpenAPI document speaks fal's schema names, defaults and ranges (§13)."""

from __future__ import annotations

from typing import Any

import pytest
from service_helpers import Service
from starlette.testclient import TestClient

from service.schema import APP_ID, ENDPOINT_ID


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
