"""What the OpenAI Images API routes (:mod:`service.routes.openai`) answer, for the OpenAPI
document: OpenAI's bodies (``ImagesResponse``, the model list, the stream's events) and its
error shape ``{"error": {message, type, param, code}}``, which every answer of these routes uses
(the body limit's 413 and an unexpected 500 included)."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from service.openai_images import MAX_IMAGE_PARTS, ImageRequest
from service.openapi_errors import RETRY_AFTER, header, json_response, model_schema, optional, ref

#: Paths under this prefix answer OpenAI's error shape (:func:`service.openapi.complete`).
PREFIX = "/v1/"
#: The key scheme of these routes, when API keys are configured (the SDK sends Bearer).
KEY_SCHEME = "OpenAIKey"
SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "The server's API key, as the OpenAI SDK sends `api_key` "
    "(`Authorization: Key <key>` works too).",
}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(
        description="`invalid_request_error`, `authentication_error`, `not_found_error`, "
        "`rate_limit_error`, `server_error`"
    )
    param: str | None = Field(description="The parameter at fault, if one is.")
    code: str | None = Field(description="A machine-readable reason, e.g. `model_not_found`.")


class OpenAIErrorBody(BaseModel):
    """OpenAI's error: `{"error": {message, type, param, code}}`."""

    error: OpenAIErrorDetail


class ModelInfo(BaseModel):
    id: str = Field(description="The fal endpoint id, e.g. `fal-ai/flux-2/flash/edit`.")
    object: Literal["model"]
    created: int
    owned_by: str
    aliases: list[str] = Field(description="Other names it answers to.")
    operation: Literal["edit", "generate"] = Field(
        description="`edit`: POST /v1/images/edits; `generate`: POST /v1/images/generations."
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelInfo]


class TokenDetails(BaseModel):
    image_tokens: int = Field(ge=0)
    text_tokens: int = Field(ge=0)


class ImageUsage(BaseModel):
    """What the transformer reads and writes, in its own tokens."""

    input_tokens: int = Field(ge=0)
    input_tokens_details: TokenDetails
    output_tokens: int = Field(ge=0)
    output_tokens_details: TokenDetails
    total_tokens: int = Field(ge=0)


class ImageData(BaseModel):
    b64_json: str | SkipJsonSchema[None] = optional(
        "The image, base64 (`response_format=b64_json`)."
    )
    url: str | SkipJsonSchema[None] = optional("The image's URL (`response_format=url`).")
    revised_prompt: str | SkipJsonSchema[None] = optional("With `enable_prompt_expansion`.")


class ImagesResponse(BaseModel):
    """OpenAI's `ImagesResponse`."""

    created: int
    data: list[ImageData]
    background: Literal["opaque"]
    output_format: Literal["png", "jpeg", "webp"]
    size: str = Field(description="`WIDTHxHEIGHT`")
    usage: ImageUsage
    safety_identifier: str | SkipJsonSchema[None] = optional("As sent (or `user`).")


class _ImageEvent(BaseModel):
    type: str = Field(description="The event's name again.")
    b64_json: str
    size: str
    created_at: int
    background: Literal["opaque"]
    quality: str
    output_format: Literal["png", "jpeg", "webp"]


class PartialImageEvent(_ImageEvent):
    """`image_edit.partial_image` / `image_generation.partial_image`: a step preview."""

    partial_image_index: int = Field(ge=0)


class CompletedImageEvent(_ImageEvent):
    """`image_edit.completed` / `image_generation.completed`: one per output image."""

    usage: ImageUsage


class ErrorEvent(BaseModel):
    """`error`: the request failed; the stream ends."""

    type: Literal["error"]
    error: OpenAIErrorDetail


MODELS: tuple[type[BaseModel], ...] = (
    OpenAIErrorBody,
    ModelList,
    ImagesResponse,
    PartialImageEvent,
    CompletedImageEvent,
    ErrorEvent,
)


def error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return json_response(OpenAIErrorBody, description, headers or None)


UNAUTHORIZED = error(
    "No API key, or a wrong one (`invalid_api_key`).",
    **{"WWW-Authenticate": header("`Bearer`", required=True)},
)
SERVER_ERROR = error(
    "An unexpected error, or a request that failed in the engine (`server_error`)."
)
NOT_FOUND = error("No such model (`model_not_found`).")

_BINARY = {"type": "string", "format": "binary"}
_FORM_FIELDS = copy.deepcopy(model_schema(ImageRequest))
for _field in _FORM_FIELDS["properties"].values():  # a form field is text: numbers and JSON too
    _field.pop("title", None)
_FORM_FIELDS["properties"]["loras"] = {
    "type": "string",
    "description": 'fal\'s `loras`, as JSON text: `[{"path": …, "scale": 1.0}]`.',
}
EDITS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "OpenAI's image edit form: one or more `image` (or `image[]`) files "
        f"(PNG, JPEG, WebP or GIF; at most {MAX_IMAGE_PARTS}), a `prompt`, and OpenAI's "
        "optional fields; fal's `seed`, `guidance_scale` and `enable_prompt_expansion` as "
        "extra fields. `mask` is refused (FLUX.2 edits need none).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    **_FORM_FIELDS,
                    "properties": {
                        "image": {"anyOf": [_BINARY, {"type": "array", "items": _BINARY}]},
                        "image[]": {"type": "array", "items": _BINARY},
                        "mask": _BINARY,
                        **_FORM_FIELDS["properties"],
                    },
                },
            }
        },
    }
}
GENERATIONS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "OpenAI's image generation request, as JSON (strict: no NaN, no "
        "duplicate keys); fal's extra fields as with the edits.",
        "content": {"application/json": {"schema": model_schema(ImageRequest)}},
    }
}

_EVENTS = {
    "text/event-stream": {
        # One event (FastAPI's SSE convention; OpenAPI 3.2's itemSchema).
        "itemSchema": {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "anyOf": [
                            ref(PartialImageEvent),
                            ref(CompletedImageEvent),
                            ref(ErrorEvent),
                        ]
                    },
                },
            },
        }
    }
}
IMAGES_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The images (JSON); with `stream=true`, server-sent events: a "
        "`….partial_image` per preview (`partial_images`), then a `….completed` per image, or an "
        "`error` event; `: ping` comments keep it open.",
        "content": {"application/json": {"schema": ref(ImagesResponse)}, **_EVENTS},
    },
    400: error(
        "A parameter is invalid (`param` names it), an image cannot be read, the form or the JSON "
        "is malformed, or the model serves the other operation."
    ),
    404: error("No such model, or none that serves this operation (`model_not_found`)."),
    413: error("The body, or an image, is larger than its limit (`request_too_large`)."),
    429: error(
        "Too many requests are waiting (`rate_limit_error`).",
        **{"Retry-After": header(RETRY_AFTER, required=True)},
    ),
    499: error("The request was cancelled."),
    503: error(
        "The engine ran out of memory, the worker cannot run, or the queue cannot be reached "
        "for now (then with `Retry-After`).",
        **{"Retry-After": header(f"{RETRY_AFTER} (when the queue cannot be reached)")},
    ),
    504: error("The request did not start within its `X-Fal-Request-Timeout`."),
}
MODELS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(ModelList, "The models served here."),
}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(ModelInfo, "The model."),
    404: NOT_FOUND,
}
