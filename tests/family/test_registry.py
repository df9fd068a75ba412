"""The endpoint registry: fal's fields, defaults and ranges per endpoint, the routes and OpenAPI
derived from it, what each endpoint asks of the engine, FLUX2_ENDPOINTS, and jobs of every
endpoint through Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

from pipelines.fake import FakeEngine
from pipelines.types import BASE_STEPS
from service.bootstrap import build_app
from service.endpoints import ENDPOINTS, enabled_endpoints, regimes_of
from service.jobs import Job
from service.queue.redis import RedisJobQueue
from tests.helpers.images import png_data_uri
from tests.helpers.services import fake_components

# fal-family-and-openai.md §1, as a table: references used, steps, acceleration, loras, the
# published image_size default (None: fal publishes none), the input's fal type name.
FAL_TABLE: dict[str, tuple[int, bool, bool, str | None, str]] = {
    "fal-ai/flux-2/flash/edit": (4, False, False, "square_hd", "Flux2FlashEditInput"),
    "fal-ai/flux-2/turbo/edit": (4, False, False, "square_hd", "Flux2FlashEditInput"),
    "fal-ai/flux-2/flash": (0, False, False, "landscape_4_3", "Flux2FlashInput"),
    "fal-ai/flux-2/turbo": (0, False, False, "landscape_4_3", "Flux2FlashInput"),
    "fal-ai/flux-2": (0, True, False, "landscape_4_3", "Flux2Input"),
    "fal-ai/flux-2/edit": (4, True, False, None, "Flux2EditInput"),
    "fal-ai/flux-2/lora": (0, True, True, "landscape_4_3", "Flux2LoraInput"),
    "fal-ai/flux-2/lora/edit": (3, True, True, None, "Flux2LoraEditInput"),
}
COMMON = {
    "prompt",
    "guidance_scale",
    "seed",
    "image_size",
    "num_images",
    "enable_prompt_expansion",
    "sync_mode",
    "enable_safety_checker",
    "output_format",
}


def body_for(endpoint_id: str, **overrides: Any) -> dict[str, Any]:
    references = FAL_TABLE[endpoint_id][0]
    body: dict[str, Any] = {"prompt": "a red fox", "image_size": "square", "seed": 11}
    if references:
        body["image_urls"] = [png_data_uri(64, 64, (10 * i, 90, 200)) for i in range(5)]
    return {**body, **overrides}


def test_the_registry_serves_fals_family() -> None:
    assert list(ENDPOINTS) == [
        "fal-ai/flux-2/flash/edit",
        "fal-ai/flux-2/flash",
        "fal-ai/flux-2/turbo",
        "fal-ai/flux-2/turbo/edit",
        "fal-ai/flux-2",
        "fal-ai/flux-2/edit",
        "fal-ai/flux-2/lora",
        "fal-ai/flux-2/lora/edit",
    ]
    assert set(FAL_TABLE) == set(ENDPOINTS)


@pytest.mark.parametrize("endpoint_id", list(FAL_TABLE))
def test_each_input_schema_is_fals(client: TestClient, endpoint_id: str) -> None:
    references, steps, loras, size_default, title = FAL_TABLE[endpoint_id]
    spec = client.get("/openapi.json").json()
    submit = spec["paths"][f"/queue/{endpoint_id}"]["post"]
    ref = submit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == f"#/components/schemas/{title}"
    assert f"/{endpoint_id}" in spec["paths"]
    assert f"/queue/{endpoint_id}/requests/{{request_id}}/status" in spec["paths"]
    schema = spec["components"]["schemas"][title]
    props = schema["properties"]
    expected = set(COMMON)
    if references:
        expected.add("image_urls")
    if steps:
        expected |= {"num_inference_steps", "acceleration"}
    if loras:
        expected.add("loras")
    assert set(props) == expected
    assert set(schema["x-fal-order-properties"]) == expected
    assert sorted(schema["required"]) == (["image_urls", "prompt"] if references else ["prompt"])
    assert props["image_size"].get("default") == size_default
    if references:
        assert f"only the first {references} will be used" in props["image_urls"]["description"]
    if steps:
        step_prop = props["num_inference_steps"]
        assert (step_prop["default"], step_prop["minimum"], step_prop["maximum"]) == (28, 4, 50)
        assert props["acceleration"]["default"] == "regular"
        assert props["acceleration"]["enum"] == ["none", "regular", "high"]
    if loras:
        item = spec["components"]["schemas"]["LoRAInput"]
        assert item["required"] == ["path"]
        assert item["properties"]["scale"]["default"] == 1.0
    assert (props["guidance_scale"]["default"], props["num_images"]["maximum"]) == (2.5, 4)


@pytest.mark.parametrize("endpoint_id", list(FAL_TABLE))
def test_each_endpoint_runs_its_recipe(
    client: TestClient, engine: FakeEngine, endpoint_id: str
) -> None:
    """Sync run answers fal's output; the engine got the endpoint's regime, steps and only the
    references the endpoint uses."""
    references, steps, _, _, _ = FAL_TABLE[endpoint_id]
    extra = {"num_inference_steps": 6, "acceleration": "high"} if steps else {}
    response = client.post(f"/{endpoint_id}", json=body_for(endpoint_id, **extra))
    assert response.status_code == 200, response.text
    output = response.json()
    assert set(output) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
    assert output["seed"] == 11
    assert (output["images"][0]["width"], output["images"][0]["height"]) == (512, 512)
    request_id = response.headers["x-fal-request-id"]
    (request,) = [r for batch in engine.sub_batches for r in batch if r.request_id == request_id]
    endpoint = ENDPOINTS[endpoint_id]
    assert request.regime == endpoint.regime == ("base" if steps else "turbo")
    assert request.steps == (6 if steps else None)
    assert request.acceleration == ("high" if steps else "regular")
    assert len(request.images) == references
    assert request.text_to_image is (references == 0)
    assert request.loras == ()


def test_base_endpoints_default_to_28_steps(client: TestClient, engine: FakeEngine) -> None:
    response = client.post("/fal-ai/flux-2", json=body_for("fal-ai/flux-2"))
    request_id = response.headers["x-fal-request-id"]
    (request,) = [r for batch in engine.sub_batches for r in batch if r.request_id == request_id]
    assert (request.steps, request.acceleration) == (BASE_STEPS, "regular")
    status = client.get(f"/queue/fal-ai/flux-2/requests/{request_id}/status?logs=1").json()
    assert "step 28/28" in [entry["message"] for entry in status["logs"]]


def test_unset_sizes_follow_each_endpoint(client: TestClient) -> None:
    sizes = {}
    for endpoint_id in ("fal-ai/flux-2/flash", "fal-ai/flux-2/edit"):
        body = body_for(endpoint_id, num_images=1)
        del body["image_size"]
        response = client.post(f"/{endpoint_id}", json=body)
        image = response.json()["images"][0]
        sizes[endpoint_id] = (image["width"], image["height"])
    assert sizes == {"fal-ai/flux-2/flash": (1024, 768), "fal-ai/flux-2/edit": (1024, 1024)}


@pytest.mark.parametrize(
    ("endpoint_id", "body", "loc"),
    [
        ("fal-ai/flux-2", {"num_inference_steps": 3}, ["body", "num_inference_steps"]),
        ("fal-ai/flux-2/edit", {"num_inference_steps": 51}, ["body", "num_inference_steps"]),
        ("fal-ai/flux-2", {"acceleration": "max"}, ["body", "acceleration"]),
        ("fal-ai/flux-2/lora", {"loras": [{"path": "a"}] * 4}, ["body", "loras"]),
        ("fal-ai/flux-2/lora/edit", {"loras": [{"scale": 1}]}, ["body", "loras", 0, "path"]),
        ("fal-ai/flux-2/turbo/edit", {"image_urls": []}, ["body", "image_urls"]),
    ],
)
def test_fal_ranges_are_enforced(
    client: TestClient, endpoint_id: str, body: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post(f"/{endpoint_id}", json=body_for(endpoint_id, **body))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_fields_an_endpoint_lacks_are_ignored_as_fal_does(
    client: TestClient, engine: FakeEngine
) -> None:
    body = body_for("fal-ai/flux-2/flash", num_inference_steps=40, loras=[{"path": "x"}])
    response = client.post("/fal-ai/flux-2/flash", json=body)
    assert response.status_code == 200, response.text
    request_id = response.headers["x-fal-request-id"]
    (request,) = [r for batch in engine.sub_batches for r in batch if r.request_id == request_id]
    assert (request.regime, request.steps, request.loras) == ("turbo", None, ())


def test_requests_of_any_endpoint_are_found_under_either_form(client: TestClient) -> None:
    submitted = client.post("/queue/fal-ai/flux-2/lora", json=body_for("fal-ai/flux-2/lora"))
    request_id = submitted.json()["request_id"]
    assert submitted.json()["status_url"].endswith(
        f"/queue/fal-ai/flux-2/requests/{request_id}/status"
    )
    for prefix in ("fal-ai/flux-2", "fal-ai/flux-2/lora", "fal-ai/flux-2/flash/edit"):
        path = f"/queue/{prefix}/requests/{request_id}/status"
        assert client.get(path).status_code in (200, 202), path


def test_flux2_endpoints_enables_a_subset(tmp_path: Any) -> None:
    chosen = "fal-ai/flux-2/flash, fal-ai/flux-2/turbo/edit"
    assert [e.id for e in enabled_endpoints(chosen)] == [
        "fal-ai/flux-2/flash",
        "fal-ai/flux-2/turbo/edit",
    ]
    assert regimes_of(enabled_endpoints(chosen)) == {"turbo"}
    assert regimes_of(enabled_endpoints("")) == {"turbo", "base"}
    parts = fake_components(tmp_path, endpoints=chosen)
    with TestClient(build_app(parts)) as client:
        served = client.post("/fal-ai/flux-2/flash", json=body_for("fal-ai/flux-2/flash"))
        assert served.status_code == 200, served.text
        for path in ("/fal-ai/flux-2/flash/edit", "/queue/fal-ai/flux-2/lora", "/fal-ai/flux-2"):
            refused = client.post(path, json=body_for("fal-ai/flux-2/flash"))
            assert refused.status_code == 404, path
            assert refused.json() == {"detail": f"Path {path} not found"}
        paths = client.get("/openapi.json").json()["paths"]
        assert "/queue/fal-ai/flux-2/turbo/edit" in paths
        assert "/queue/fal-ai/flux-2/flash/edit" not in paths
        assert "/queue/fal-ai/flux-2/requests/{request_id}/status" in paths
        models = client.get("/v1/models").json()["data"]
        assert [model["id"] for model in models] == [e.id for e in enabled_endpoints(chosen)]


@pytest.mark.parametrize("endpoint_id", list(FAL_TABLE))
def test_jobs_of_every_endpoint_round_trip_through_redis(redis_url: str, endpoint_id: str) -> None:
    endpoint = ENDPOINTS[endpoint_id]
    references, steps, loras, _, _ = FAL_TABLE[endpoint_id]
    extra: dict[str, Any] = {"image_size": {"width": 640, "height": 512}}
    if steps:
        extra |= {"num_inference_steps": 12, "acceleration": "none"}
    if loras:
        extra["loras"] = [{"path": "owner/repo", "scale": 0.5}, {"path": "https://x.test/a"}]
    parsed = endpoint.input_model.model_validate(body_for(endpoint_id, **extra))
    job = Job(id=str(uuid.uuid4()), input=parsed, endpoint=endpoint_id, base_url="http://t")
    queue = RedisJobQueue(redis_url, consumer="family", key_prefix=f"family-{uuid.uuid4().hex}:")
    try:
        queue.submit(job)
        (claimed,) = queue.claim(1, 5)
    finally:
        queue.close()
    assert claimed.endpoint == endpoint_id
    assert type(claimed.input) is endpoint.input_model
    assert claimed.input == parsed
    assert len(claimed.input.used_image_urls()) == references
    assert claimed.input.lora_inputs() == parsed.lora_inputs()
