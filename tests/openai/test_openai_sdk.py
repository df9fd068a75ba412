"""The official ``openai`` SDK, unmodified but for ``base_url`` and ``api_key``, against the
server: edits with one and several images (base64 and URLs), streaming with partial images,
generations (text-to-image through the registry), models, keys, and OpenAI-shaped errors."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import ImageEditCompletedEvent, ImageEditPartialImageEvent, ImagesResponse
from openai_helpers import ALICE, BOB
from PIL import Image

from service.endpoints import ENDPOINTS
from tests.helpers.images import png_bytes

MODEL = "fal-ai/flux-2/flash/edit"
RED, GREEN, BLUE = (220, 30, 40), (30, 200, 60), (20, 40, 230)


@pytest.fixture(scope="module")
def client(origin: str) -> Iterator[OpenAI]:
    """The SDK as a user makes it: only ``base_url`` and ``api_key`` set."""
    with OpenAI(base_url=f"{origin}/v1", api_key=ALICE) as made:
        yield made


def sdk(origin: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{origin}/v1", api_key=key)


def picture(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def decode(b64: str | None) -> Image.Image:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def centre(image: Image.Image) -> tuple[int, ...]:
    """The fake engine pastes the first reference in the middle of its output."""
    return tuple(image.convert("RGB").getpixel((image.width // 2, image.height // 2)))


def test_edit_one_image_as_base64(origin: str, client: OpenAI, tmp_path: Path) -> None:
    with picture(tmp_path / "car.png", RED).open("rb") as image:
        result = client.images.edit(
            model=MODEL, image=image, prompt="paint the car #FF5733", extra_body={"seed": 3}
        )
    assert isinstance(result, ImagesResponse)
    assert result.created > 0
    assert result.size == "1024x1024"  # auto: the reference's aspect at about 1 MP
    assert result.output_format == "png"
    assert result.background == "opaque"
    (item,) = result.data or []
    assert item.url is None
    output = decode(item.b64_json)
    assert (output.format, output.size) == ("PNG", (1024, 1024))
    assert centre(output) == RED
    usage = result.usage
    assert usage is not None
    assert usage.input_tokens_details.text_tokens == 512
    assert usage.input_tokens_details.image_tokens == 4096  # one 1 MP reference, 16x16 patches
    assert usage.output_tokens == 4096
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens == 512 + 4096 + 4096


def test_edit_several_images_as_urls(origin: str, client: OpenAI, tmp_path: Path) -> None:
    files = [picture(tmp_path / f"{i}.png", c) for i, c in enumerate((GREEN, RED, BLUE))]
    handles = [path.open("rb") for path in files]
    try:
        result = client.images.edit(
            model="flux-2-flash-edit",  # the short alias
            image=handles,
            prompt="put them together",
            n=2,
            size="512x768",
            response_format="url",
            output_format="jpeg",
            output_compression=40,
            user="tester-7",
        )
    finally:
        for handle in handles:
            handle.close()
    assert result.size == "512x768"
    assert result.output_format == "jpeg"
    assert result.usage is not None
    assert result.usage.input_tokens_details.image_tokens == 3 * 4096
    assert result.usage.output_tokens == 2 * (512 // 16) * (768 // 16)
    urls = [item.url for item in result.data or []]
    assert len(urls) == 2
    assert all(url and url.startswith(f"{origin}/files/") for url in urls)
    with httpx.Client() as raw:
        mine = raw.get(str(urls[0]), headers={"Authorization": f"Bearer {ALICE}"})
        theirs = raw.get(str(urls[0]), headers={"Authorization": f"Bearer {BOB}"})
    assert mine.status_code == 200
    assert theirs.status_code == 404  # another key's output: as if it did not exist
    image = Image.open(io.BytesIO(mine.content))
    assert (image.format, image.size) == ("JPEG", (512, 768))
    assert max(abs(a - b) for a, b in zip(centre(image), GREEN, strict=True)) < 30
    full = client.images.edit(
        model=MODEL, image=files[0].read_bytes(), prompt="x", size="512x768",
        response_format="url", output_format="jpeg",
    )  # fmt: skip
    assert full.data is not None and full.data[0].url
    with httpx.Client() as raw:
        default = raw.get(full.data[0].url, headers={"Authorization": f"Bearer {ALICE}"})
    assert len(mine.content) < len(default.content)  # quality 40 against the default 95


def test_edit_streams_partial_images_then_the_result(
    origin: str, client: OpenAI, tmp_path: Path
) -> None:
    with picture(tmp_path / "car.png", BLUE, (96, 64)).open("rb") as image:
        stream = client.images.edit(
            model=MODEL, image=image, prompt="make it blue", stream=True, partial_images=2,
            size="1024x512", output_format="webp",
        )  # fmt: skip
        events = list(stream)
    partials = [e for e in events if isinstance(e, ImageEditPartialImageEvent)]
    completed = [e for e in events if isinstance(e, ImageEditCompletedEvent)]
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [e.partial_image_index for e in partials] == [0, 1]
    for event in partials:
        preview = decode(event.b64_json)
        assert preview.format == "WEBP"
        assert preview.size == (256, 128)  # a quarter of the output's sides
        assert event.size == "256x128"
        assert event.output_format == "webp"
    (done,) = completed
    final = decode(done.b64_json)
    assert final.size == (1024, 512)
    assert done.size == "1024x512"
    assert done.usage.output_tokens == 64 * 32


def test_generations_run_text_to_image(origin: str, client: OpenAI) -> None:
    """No model: the first text-to-image endpoint (flash); a base model takes its step count;
    an edit model is refused with the route to use."""
    default = client.images.generate(prompt="a red car", size="512x512", extra_body={"seed": 5})
    again = client.images.generate(
        model="flux-2-flash", prompt="a red car", size="512x512", extra_body={"seed": 5}
    )
    assert default.data and again.data
    assert default.data[0].b64_json == again.data[0].b64_json
    assert decode(default.data[0].b64_json).size == (512, 512)
    assert default.usage is not None and default.usage.input_tokens == 512  # text only
    base = client.images.generate(
        model="fal-ai/flux-2",
        prompt="a red car",
        size="512x512",
        extra_body={"seed": 5, "num_inference_steps": 6},
    )
    assert base.data and base.data[0].b64_json != default.data[0].b64_json  # another recipe
    landscape = client.images.generate(model="flux-2-turbo", prompt="a red car")
    assert landscape.data and decode(landscape.data[0].b64_json).size == (1024, 768)
    with pytest.raises(openai.BadRequestError) as steps:
        client.images.generate(prompt="x", extra_body={"num_inference_steps": 6})
    assert steps.value.param == "num_inference_steps"
    with pytest.raises(openai.BadRequestError) as wrong:
        client.images.generate(model=MODEL, prompt="a red car")
    assert wrong.value.param == "model"
    assert "/v1/images/edits" in wrong.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(model="dall-e-3", prompt="a red car")
    assert unknown.value.code == "model_not_found"


def test_models_list_the_endpoints(origin: str, client: OpenAI) -> None:
    listed = client.models.list()
    ids = [model.id for model in listed]
    assert ids[0] == MODEL
    assert set(ids) == set(ENDPOINTS)
    model = listed.data[0]
    assert model.owned_by == "flux2-edit"
    assert model.model_extra is not None
    assert model.model_extra["aliases"] == ["flux-2-flash-edit"]
    assert client.models.retrieve("flux-2-flash-edit").id == MODEL
    assert client.models.retrieve("flux-2-lora").model_extra["operation"] == "generate"


def test_keys(origin: str, client: OpenAI, tmp_path: Path) -> None:
    red = picture(tmp_path / "red.png", RED).read_bytes()
    with sdk(origin, "wrong-key") as wrong, pytest.raises(openai.AuthenticationError) as caught:
        wrong.images.edit(model=MODEL, image=red, prompt="x")
    assert caught.value.code == "invalid_api_key"
    with sdk(origin, "wrong-key") as wrong, pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with sdk(origin, BOB) as bob:
        result = bob.images.edit(model=MODEL, image=red, prompt="x", size="512x512")
    assert result.data is not None and result.data[0].b64_json


def test_a_flagged_image_comes_back_black(flagging_origin: str, tmp_path: Path) -> None:
    red = picture(tmp_path / "red.png", RED).read_bytes()
    with sdk(flagging_origin, "any") as anyone:
        result = anyone.images.edit(model=MODEL, image=red, prompt="x", size="512x512")
    image = decode((result.data or [])[0].b64_json).convert("RGB")
    assert image.getextrema() == ((0, 0), (0, 0), (0, 0))


# -- hostile input: every refusal is OpenAI-shaped ----------------------------------------------


def refused(client: OpenAI, **call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        client.images.edit(**{"model": MODEL, "prompt": "x", **call})
    error = caught.value
    assert isinstance(error.body, dict), error.body
    assert set(error.body) == {"message", "type", "param", "code"}, error.body
    assert 400 <= error.status_code < 500
    return error


def test_hostile_multipart_gets_openai_errors(origin: str, client: OpenAI, tmp_path: Path) -> None:
    red = png_bytes(64, 64, RED)
    mask = refused(client, image=red, mask=red)
    assert (mask.status_code, mask.body["param"]) == (400, "mask")  # type: ignore[index]
    text = refused(client, image=("notes.png", b"just some text", "image/png"))
    assert (text.status_code, text.code) == (400, "invalid_image_format")
    many = refused(client, image=[red] * 50)
    assert many.status_code == 400
    for size in ("100x100", "4096x1024", "big", "1024x"):
        bad = refused(client, image=red, size=size)
        assert (bad.status_code, bad.param) == (400, "size")
    transparent = refused(client, image=red, background="transparent")
    assert transparent.param == "background"
    five = refused(client, image=red, n=5)
    assert five.param == "n"
    steps = refused(client, image=red, extra_body={"num_inference_steps": 28})
    assert (steps.param, steps.code) == ("num_inference_steps", "unsupported_parameter")
    loras = refused(client, image=red, extra_body={"loras": '[{"path": "x", "scale": 1}]'})
    assert loras.param == "loras"
    unknown = refused(client, image=red, model="gpt-image-1")
    assert (unknown.status_code, unknown.code) == (404, "model_not_found")
    huge_image = refused(client, image=b"\x89PNG" + bytes(1024 * 1024 + 10))
    assert (huge_image.status_code, huge_image.code) == (413, "image_too_large")
    huge_body = refused(client, image=[red, bytes(3 * 1024 * 1024)])
    assert (huge_body.status_code, huge_body.code) == (413, "request_too_large")


def test_malformed_requests_get_openai_errors(origin: str) -> None:
    headers = {"Authorization": f"Bearer {ALICE}"}
    with httpx.Client(base_url=origin, headers=headers) as raw:
        none = raw.post("/v1/images/edits", data={"prompt": "x"}, files={"other": b"1"})
        json_body = raw.post("/v1/images/edits", json={"prompt": "x"})
        no_prompt = raw.post("/v1/images/edits", files={"image": png_bytes()})
        garbage = raw.post(
            "/v1/images/edits",
            content=b"--x\r\nnonsense",
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        not_json = raw.post("/v1/images/generations", content=b"{", headers=headers)
    for answer, param in ((none, "image"), (json_body, None), (no_prompt, "prompt")):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param, answer.text
    assert garbage.status_code == 400
    assert set(garbage.json()["error"]) == {"message", "type", "param", "code"}
    assert not_json.status_code == 400
    assert not_json.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"prompt": "x", "guidance_scale": NaN}', "NaN is not a JSON value"),
        (b'{"prompt": "x", "seed": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"prompt": "x", "guidance_scale": 1e999}', "out of range"),
        (b'{"prompt": "x", "prompt": "y"}', "duplicate key 'prompt'"),
        (b'{"prompt": "x", "loras": ' + b"[" * 40 + b"]" * 40 + b"}", "nested more than 32"),
        (b'{"prompt": "x", "seed": ' + b"9" * 1001 + b"}", "more than 1000 digits"),
        (b'{"prompt": "\\ud800"}', "lone surrogate"),
        (b'{"prompt": "\xff"}', "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 32"),
    ],
    ids=[
        "nan",
        "infinity",
        "overflow",
        "duplicate",
        "deep",
        "huge-int",
        "surrogate",
        "utf8",
        "abyss",
    ],
)
def test_odd_json_is_an_openai_400_never_a_500(origin: str, body: bytes, reason: str) -> None:
    """Strict JSON on the generations route (#12): what Python's json module lets through, or
    chokes on, is OpenAI's 400 ``invalid_json`` naming why."""
    answer = httpx.post(
        f"{origin}/v1/images/generations",
        content=body,
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_json",
        None,
    )
    assert reason in error["message"], error["message"]
