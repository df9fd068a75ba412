"""The OpenAI Images API on the same engine: OpenAI requests in, the endpoint's typed input out,
and the job's outcome back in OpenAI's shapes (docs/reference/fal-family-and-openai.md §3).

An OpenAI request becomes exactly the job a fal request would: its fields are mapped onto the
endpoint's fal input (:func:`fal_body`), which :func:`service.submission.new_job` parses once
into the endpoint's input model, so the queue, batching, safety checker and limits are the fal
routes' own. The routes are :mod:`service.routes.openai`.

**Models** come from the endpoint registry (:data:`service.endpoints.ENDPOINTS`, as far as
``FLUX2_ENDPOINTS`` enables them): one per endpoint, named by its fal id or a short alias
(``fal-ai/flux-2/flash/edit`` → ``flux-2-flash-edit``, ``fal-ai/flux-2`` → ``flux-2``). An edit
endpoint serves ``/v1/images/edits``; a text-to-image one ``/v1/images/generations``. Without a
``model`` a request goes to the first enabled endpoint of its kind in the registry's order
(``fal-ai/flux-2/flash/edit`` for edits, ``fal-ai/flux-2/flash`` for generations); OpenAI's own
model names (``gpt-image-1``, ``dall-e-3``) are not aliases: they get 404 ``model_not_found``,
so nobody mistakes one model for another. A field an endpoint's input lacks
(``num_inference_steps`` and ``loras`` on flash/edit) is refused with a 400 naming it, never
dropped silently. So new endpoints need no code here: an entry in the registry is enough.

**Usage** counts what the transformer reads and writes, in its own tokens: every prompt is 512
text tokens (the text encoder pads or cuts it to 512), each reference one image token per 16×16
patch at the size it is fed (about 1 MP: 4096), and each output one image token per 16×16 patch.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import Flux2Error, InvalidRequest, QueueFull, QueueUnavailable
from pipelines.sizes import GRID, MAX_SIDE, MIN_SIDE, reference_size
from pipelines.types import MAX_PREVIEWS, MAX_REFERENCES
from service.endpoints import ENDPOINTS, Endpoint
from service.inputs import sniff_image
from service.jobs import Outcome

#: Image parts one edit may carry (OpenAI's limit); the endpoint uses its first few (fal's 4).
MAX_IMAGE_PARTS = 16
#: What a model is for: editing images, or making them from text.
Operation = Literal["edit", "generate"]
#: Text tokens per prompt: the text encoder pads or cuts every prompt to this many.
TEXT_TOKENS = 512
#: Fields beyond OpenAI's that map onto the fal input of the same name, where the endpoint has it.
EXTRA_FIELDS = ("seed", "guidance_scale", "num_inference_steps", "enable_prompt_expansion", "loras")
#: ``Retry-After`` of a full or unreachable queue, as the fal routes send it.
RETRY_AFTER_SECONDS = 5
#: fal input fields by the OpenAI parameter they come from, for error locations.
PARAMS = {"image_urls": "image", "num_images": "n", "image_size": "size", "sync_mode": "stream"}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)

    @classmethod
    def of(cls, exc: Flux2Error) -> OpenAIError:
        """One of our errors (auth, queue full, storage) in OpenAI's shape."""
        if isinstance(exc, InvalidRequest):
            problem = exc.problems[0]
            return cls(400, problem.msg, param=_param(problem.loc), code=problem.type)
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
        default = "server_error" if exc.http_status >= 500 else "invalid_request_error"
        code = "invalid_api_key" if exc.http_status == 401 else exc.code
        retry = RETRY_AFTER_SECONDS if isinstance(exc, QueueFull | QueueUnavailable) else None
        return cls(
            exc.http_status,
            exc.message,
            code=code,
            kind=kind.get(exc.http_status, default),
            retry_after=retry,
        )


def _param(loc: Any) -> str | None:
    parts = [p for p in (loc or ()) if p not in ("body",)]
    if not parts:
        return None
    first = str(parts[0])
    name = PARAMS.get(first, first)
    return f"{name}[{parts[1]}]" if name == "image" and len(parts) > 1 else name


# -- models ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """An endpoint as an OpenAI model."""

    endpoint: Endpoint
    operation: Operation

    @property
    def id(self) -> str:
        return self.endpoint.id

    @property
    def aliases(self) -> tuple[str, ...]:
        return (self.endpoint.slug,)

    def takes(self, field: str) -> bool:
        return field in self.endpoint.input_model.model_fields


def models(endpoints: Iterable[Endpoint] | None = None) -> list[Model]:
    """Every endpoint this server answers (``endpoints``; None: the whole registry), as a model,
    in the registry's order."""
    served = ENDPOINTS.values() if endpoints is None else endpoints
    return [
        Model(endpoint, "edit" if endpoint.mode == "edit" else "generate") for endpoint in served
    ]


def find_model(
    name: str | None, operation: Operation, endpoints: Iterable[Endpoint] | None = None
) -> Model:
    """The model ``name`` (an id or alias; None: the first model for ``operation``) among
    ``endpoints`` (None: the whole registry).

    Raises:
        OpenAIError: 404 ``model_not_found`` for an unknown model, or when no enabled endpoint
            serves ``operation``; 400 for a model of the other operation.
    """
    served = models(endpoints)
    if not name:
        for model in served:
            if model.operation == operation:
                return model
        what = "text-to-image" if operation == "generate" else "image editing"
        route = "/v1/images/edits" if operation == "generate" else "/v1/images/generations"
        raise OpenAIError(
            404,
            f"{what} is not served by this server (no such FLUX.2 endpoint is enabled in "
            f"FLUX2_ENDPOINTS); use POST {route}",
            param="model",
            code="model_not_found",
        )
    for model in served:
        if name == model.id or name in model.aliases:
            if model.operation != operation:
                route = (
                    "/v1/images/edits" if model.operation == "edit" else "/v1/images/generations"
                )
                what = "edits images" if model.operation == "edit" else "makes images from text"
                raise OpenAIError(
                    400, f"{model.id} {what}: use POST {route}", param="model", code="wrong_model"
                )
            return model
    known = ", ".join(name for model in served for name in (model.id, *model.aliases))
    raise OpenAIError(
        404,
        f"The model '{name[:100]}' is not served here; models: {known}",
        param="model",
        code="model_not_found",
    )


def model_json(model: Model, created: int) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": created,
        "owned_by": "flux2-edit",
        "aliases": list(model.aliases),
        "operation": model.operation,
    }


# -- requests -------------------------------------------------------------------------------------


class ImageRequest(BaseModel):
    """The fields of ``/v1/images/edits`` and ``/v1/images/generations`` this server reads.

    Form fields arrive as strings and are coerced (lax mode). ``quality``, ``input_fidelity``,
    ``moderation`` and ``style`` are accepted and have no effect (FLUX.2 has no such knobs);
    unknown fields are ignored, as newer SDKs may send more.
    """

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=4)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(default=None, ge=0, le=100)
    background: Literal["auto", "opaque"] | None = None
    quality: Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"] | None = (
        None
    )
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    stream: bool = False
    partial_images: int = Field(default=0, ge=0, le=MAX_PREVIEWS)
    # fal's fields, as extra form or JSON fields (the SDK's extra_body)
    seed: int | None = None
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    enable_prompt_expansion: bool | None = None
    loras: list[dict[str, Any]] | None = None

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_from_form(cls, value: Any) -> Any:
        """A form field carries the list as JSON text."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("loras must be a JSON list of {path, scale}") from None
        return value

    @classmethod
    def parse(cls, fields: dict[str, Any]) -> ImageRequest:
        """The request in ``fields``; an OpenAI 400 naming the first bad parameter otherwise."""
        if fields.get("background") == "transparent":
            raise OpenAIError(
                400,
                "background=transparent is not supported: FLUX.2 makes opaque images",
                param="background",
                code="unsupported_value",
            )
        if fields.get("output_format") in ("gif", "svg"):
            raise OpenAIError(
                400,
                "output_format must be png, jpeg or webp",
                param="output_format",
                code="unsupported_value",
            )
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]
            param = ".".join(str(part) for part in problem["loc"]) or None
            raise OpenAIError(
                400, f"{param}: {problem['msg']}", param=param, code=problem["type"]
            ) from None

    @property
    def format(self) -> str:
        return self.output_format

    @property
    def b64(self) -> bool:
        """Whether images come back as base64 (always when streaming: events carry base64)."""
        return self.stream or self.response_format != "url"


@dataclass(frozen=True)
class Reference:
    """An uploaded image: its bytes and its upright size."""

    data: bytes
    content_type: str
    width: int
    height: int

    @classmethod
    def read(cls, data: bytes, index: int, *, max_bytes: int) -> Reference:
        if len(data) > max_bytes:
            raise OpenAIError(
                413,
                f"image {index} is larger than {max_bytes} bytes",
                param="image",
                code="image_too_large",
            )
        try:
            content_type = sniff_image(data, loc=("body", "image_urls", index))
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                orientation = image.getexif().get(0x0112, 1)
        except InvalidRequest as exc:
            raise OpenAIError(
                400, exc.message, param=f"image[{index}]", code="invalid_image_format"
            ) from None
        if orientation in (5, 6, 7, 8):  # EXIF says the picture is turned a quarter
            width, height = height, width
        return cls(data, content_type, width, height)

    def data_uri(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode()}"


def parse_size(text: str | None) -> tuple[int, int] | None:
    """``WxH`` within 512..2048 per side; None for ``auto`` (or nothing)."""
    if text is None or text == "auto":
        return None
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text.strip())
    if match is None:
        raise OpenAIError(
            400, "size must be 'auto' or WIDTHxHEIGHT, e.g. 1024x768", param="size", code="bad_size"
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise OpenAIError(
            400,
            f"size {width}x{height}: each side must be between {MIN_SIDE} and {MAX_SIDE}",
            param="size",
            code="bad_size",
        )
    return width, height


def auto_size(width: int, height: int, pixels: int = 1024 * 1024) -> tuple[int, int]:
    """``size=auto`` of an edit: the first reference's aspect at about ``pixels``, on the
    16-pixel grid, each side within 512..2048."""
    scale = math.sqrt(pixels / (width * height))

    def side(value: int) -> int:
        return min(MAX_SIDE, max(MIN_SIDE, round(value * scale / GRID) * GRID))

    return side(width), side(height)


def fal_body(
    request: ImageRequest,
    model: Model,
    references: list[Reference],
    size: tuple[int, int] | None,
) -> dict[str, Any]:
    """The endpoint's fal input for ``request`` (validated by the caller, with the model)."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "output_format": request.output_format,
        "sync_mode": request.b64,
    }
    if references:
        body["image_urls"] = [ref.data_uri() for ref in references[:MAX_REFERENCES]]
    if size is not None:
        body["image_size"] = {"width": size[0], "height": size[1]}
    if request.n is not None:
        body["num_images"] = request.n
    for name in EXTRA_FIELDS:
        value = getattr(request, name)
        if value is None:
            continue
        if not model.takes(name):
            raise OpenAIError(
                400,
                f"{name} is not taken by {model.id}"
                + (" (a fixed 8-step flash schedule)" if name == "num_inference_steps" else ""),
                param=name,
                code="unsupported_parameter",
            )
        body[name] = value
    return {key: value for key, value in body.items() if model.takes(key)}


def input_errors(errors: list[Any]) -> OpenAIError:
    """The endpoint input's validation errors (pydantic's) as one OpenAI 400."""
    problem = errors[0]
    return OpenAIError(400, problem["msg"], param=_param(problem["loc"]), code=problem["type"])


# -- answers --------------------------------------------------------------------------------------


def usage(
    references: list[Reference], output: tuple[int, int], images: int, reference_pixels: int
) -> dict[str, Any]:
    """Tokens as the module docstring counts them."""
    image_tokens = 0
    for index, ref in enumerate(references[:MAX_REFERENCES]):
        try:
            fed = reference_size(ref.width, ref.height, target_pixels=reference_pixels, index=index)
        except InvalidRequest:
            continue
        image_tokens += (fed.width // GRID) * (fed.height // GRID)
    width, height = output
    output_tokens = images * math.ceil(width / GRID) * math.ceil(height / GRID)
    input_tokens = TEXT_TOKENS + image_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"image_tokens": image_tokens, "text_tokens": TEXT_TOKENS},
        "output_tokens": output_tokens,
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def output_images(outcome: Outcome) -> list[dict[str, Any]]:
    images: list[dict[str, Any]] = outcome.body.get("images", [])
    return images


def b64_of(image: dict[str, Any]) -> str:
    """The base64 payload of an output returned as a ``data:`` URI (``sync_mode``)."""
    return str(image["url"]).split(",", 1)[1]


def images_response(
    request: ImageRequest, outcome: Outcome, created: int, usage_json: dict[str, Any]
) -> dict[str, Any]:
    """OpenAI's ``ImagesResponse`` for a job that succeeded."""
    images = output_images(outcome)
    revised = outcome.body.get("prompt") if request.enable_prompt_expansion else None
    data = []
    for image in images:
        item: dict[str, Any] = {"b64_json": b64_of(image)} if request.b64 else {"url": image["url"]}
        if revised is not None:
            item["revised_prompt"] = revised
        data.append(item)
    first = images[0] if images else {}
    body: dict[str, Any] = {
        "created": created,
        "data": data,
        "background": "opaque",
        "output_format": request.output_format,
        "size": f"{first.get('width')}x{first.get('height')}",
        "usage": usage_json,
    }
    if request.safety_identifier or request.user:
        body["safety_identifier"] = request.safety_identifier or request.user
    return body


def outcome_error(outcome: Outcome) -> OpenAIError:
    """A job that failed, in OpenAI's shape (fal's 422 becomes a 400 naming the parameter)."""
    detail = outcome.body.get("detail")
    if isinstance(detail, list) and detail:
        problem = detail[0]
        return OpenAIError(
            400, str(problem.get("msg")), param=_param(problem.get("loc")), code=problem.get("type")
        )
    status = outcome.status_code
    return OpenAIError(
        status,
        outcome.error or "The request failed",
        code=outcome.error_type,
        kind="server_error" if status >= 500 else "invalid_request_error",
    )
