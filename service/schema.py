"""fal's ``fal-ai/flux-2/flash/edit`` schema: field names, types, defaults, ranges, descriptions.

Sources: fal's llms.txt, the JS client's generated types (``Flux2FlashEditInput``,
``Flux2FlashEditOutput``) and the fal SDK's ``ImageSize``/``Image``
(docs/reference/fal-protocol.md §13).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from pipelines.sizes import DEFAULT_PRESET, PRESETS
from pipelines.sizes import ImageSize as PixelSize
from pipelines.types import MAX_REFERENCES, MAX_SEED

ENDPOINT_ID = "fal-ai/flux-2/flash/edit"
MAX_PROMPT_CHARS = 10_000  # the text encoder reads 512 tokens; this only stops abuse
APP_ID = "fal-ai/flux-2"

ImageSizePreset = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
OutputFormatName = Literal["jpeg", "png", "webp"]
assert set(ImageSizePreset.__args__) == set(PRESETS)  # type: ignore[attr-defined]


class ImageSize(BaseModel):
    width: int = Field(
        default=512, ge=512, le=2048, description="The width of the generated image."
    )
    height: int = Field(
        default=512, ge=512, le=2048, description="The height of the generated image."
    )


class Flux2FlashEditInput(BaseModel):
    """The input of ``fal-ai/flux-2/flash/edit``. Unknown fields are ignored, as fal's are."""

    model_config = ConfigDict(
        extra="ignore",
        title="Flux2FlashEditInput",
        json_schema_extra={
            "x-fal-order-properties": [
                "prompt",
                "guidance_scale",
                "seed",
                "image_size",
                "num_images",
                "enable_prompt_expansion",
                "sync_mode",
                "enable_safety_checker",
                "output_format",
                "image_urls",
            ],
            "examples": [
                {
                    "prompt": "Change his clothes to casual suit and tie",
                    "image_urls": ["https://example.com/input.png"],
                    "guidance_scale": 2.5,
                    "image_size": "square_hd",
                    "num_images": 1,
                    "enable_safety_checker": True,
                    "output_format": "png",
                }
            ],
        },
    )

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="The prompt to edit the image."
    )
    guidance_scale: float = Field(
        default=2.5,
        ge=0,
        le=20,
        description="Guidance Scale is a measure of how close you want the model to stick to your "
        "prompt when looking for a related image to show you.",
    )
    seed: int | None = Field(
        default=None,
        description="The seed to use for the generation. If not provided, a random seed will be "
        "used.",
    )
    image_size: ImageSize | ImageSizePreset | None = Field(
        default="square_hd",
        description="The size of the image to generate. The width and height must be between 512 "
        "and 2048 pixels.",
    )
    num_images: int = Field(default=1, ge=1, le=4, description="The number of images to generate.")
    enable_prompt_expansion: bool = Field(
        default=False, description="If set to true, the prompt will be expanded for better results."
    )
    sync_mode: bool = Field(
        default=False,
        description="If `True`, the media will be returned as a data URI and the output data "
        "won't be available in the request history.",
    )
    enable_safety_checker: bool = Field(
        default=True, description="If set to true, the safety checker will be enabled."
    )
    output_format: OutputFormatName = Field(
        default="png", description="The format of the generated image."
    )
    image_urls: list[str] = Field(
        min_length=1,
        description=f"The URLs of the images for editing. A maximum of {MAX_REFERENCES} images "
        f"are allowed, if more are provided, only the first {MAX_REFERENCES} will be used.",
    )

    # What the engine needs beyond fal's published ranges, checked here so that a request is
    # refused at the edge (fal's 422) rather than failing in the worker. Validators, not Field
    # bounds: the published schema stays fal's.

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError(
                "string_too_short",
                "String should have at least 1 character that is not whitespace",
                {"min_length": 1},
            )
        return value

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEED:
            raise PydanticCustomError(
                "value_error",
                "seed must be between 0 and {max_seed}",
                {"max_seed": MAX_SEED},
            )
        return value

    def used_image_urls(self) -> list[str]:
        """The references the edit uses: the first four, as fal documents."""
        return self.image_urls[:MAX_REFERENCES]

    def output_size(self) -> PixelSize:
        """``image_size`` in pixels (its bounds were checked by the schema)."""
        size = self.image_size
        if size is None:
            return PRESETS[DEFAULT_PRESET]
        if isinstance(size, str):
            return PRESETS[size]
        return PixelSize(size.width, size.height)


class ImageFile(BaseModel):
    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(default=None, description="The mime type of the file.")
    file_name: str | None = Field(default=None, description="The name of the file.")
    file_size: int | None = Field(default=None, description="The size of the file in bytes.")
    width: int | None = Field(default=None, description="The width of the image in pixels.")
    height: int | None = Field(default=None, description="The height of the image in pixels.")


class Flux2FlashEditOutput(BaseModel):
    model_config = ConfigDict(title="Flux2FlashEditOutput")

    images: list[ImageFile] = Field(description="The edited images")
    timings: dict[str, float] = Field(description="The timings of the generation process.")
    seed: int = Field(description="Seed of the generated Image.")
    has_nsfw_concepts: list[bool] = Field(
        description="Whether the generated images contain NSFW concepts."
    )
    prompt: str = Field(description="The prompt used for generating the image.")


def openapi_components() -> dict[str, Any]:
    """JSON schemas of the input model and the models it uses, as OpenAPI components."""
    schema = Flux2FlashEditInput.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = schema.pop("$defs", {})
    components["Flux2FlashEditInput"] = schema
    return components
