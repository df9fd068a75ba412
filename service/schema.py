"""fal's FLUX.2 [dev] schemas: field names, types, defaults, ranges, descriptions.

Sources: fal's llms.txt, the JS client's generated types (``Flux2FlashEditInput``,
``Flux2FlashInput``, ``Flux2Input``, ``Flux2EditInput``, ``Flux2LoraInput``,
``Flux2LoraEditInput``, ``Flux2Output``, ``LoRAInput``) and the fal SDK's ``ImageSize``/``Image``
(docs/reference/fal-protocol.md §13, fal-family-and-openai.md §1).

The family's inputs share their fields: :class:`Flux2InputBase` has what every endpoint takes, and
three mixins add reference images (:class:`_References`), the base model's step count and
acceleration (:class:`_BaseSteps`) and LoRAs (:class:`_Loras`). Each endpoint's input is one line
of composition plus its own defaults (``image_size``, the prompt's wording, how many references it
uses); :mod:`service.endpoints` maps endpoint ids to them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from pipelines.sizes import DEFAULT_PRESET, PRESETS
from pipelines.sizes import ImageSize as PixelSize
from pipelines.types import BASE_STEPS, MAX_LORAS, MAX_REFERENCES, MAX_SEED, MAX_STEPS, Acceleration

ENDPOINT_ID = "fal-ai/flux-2/flash/edit"
MAX_PROMPT_CHARS = 10_000  # the text encoder reads 512 tokens; this only stops abuse
APP_ID = "fal-ai/flux-2"
MIN_STEPS = 4  # fal's floor for num_inference_steps on the base endpoints
MAX_LORA_PATH_CHARS = 2048

ImageSizePreset = Literal[
    "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"
]
OutputFormatName = Literal["jpeg", "png", "webp"]
assert set(ImageSizePreset.__args__) == set(PRESETS)  # type: ignore[attr-defined]

EDIT_PROMPT = "The prompt to edit the image."
GENERATE_PROMPT = "The prompt to generate an image from."
SIZE_DESCRIPTION = (
    "The size of the image to generate. The width and height must be between 512 and 2048 pixels."
)


class ImageSize(BaseModel):
    width: int = Field(
        default=512, ge=512, le=2048, description="The width of the generated image."
    )
    height: int = Field(
        default=512, ge=512, le=2048, description="The height of the generated image."
    )


class LoRAInput(BaseModel):
    """One LoRA of a request: where its weights are, and how strongly they apply."""

    model_config = ConfigDict(extra="ignore", title="LoRAInput")

    path: str = Field(
        min_length=1,
        max_length=MAX_LORA_PATH_CHARS,
        description="URL, HuggingFace repo ID (owner/repo) to lora weights.",
    )
    scale: float = Field(
        default=1.0,
        allow_inf_nan=False,
        description="Scale factor for LoRA application (0.0 to 4.0).",
    )


# -- shared field definitions ---------------------------------------------------------------------


def prompt_field(description: str) -> Any:
    return Field(min_length=1, max_length=MAX_PROMPT_CHARS, description=description)


def image_size_field(default: ImageSizePreset | None) -> Any:
    return Field(default=default, description=SIZE_DESCRIPTION)


def image_urls_field(used: int) -> Any:
    return Field(
        min_length=1,
        description=f"The URLs of the images for editing. A maximum of {used} images are "
        f"allowed, if more are provided, only the first {used} will be used.",
    )


def _order(*names: str) -> dict[str, Any]:
    return {"x-fal-order-properties": list(names)}


COMMON_ORDER = (
    "prompt",
    "guidance_scale",
    "seed",
    "image_size",
    "num_images",
    "enable_prompt_expansion",
    "sync_mode",
    "enable_safety_checker",
    "output_format",
)


class Flux2InputBase(BaseModel):
    """What every FLUX.2 [dev] endpoint takes. Unknown fields are ignored, as fal's are.

    Subclasses set ``prompt`` and ``image_size`` (their descriptions and defaults differ) and add
    the mixins' fields; the accessors below answer for every endpoint (no references, the
    regime's steps, no LoRAs unless a mixin says otherwise).
    """

    model_config = ConfigDict(extra="ignore")

    #: References the endpoint uses (the rest are ignored, as fal documents); 0: text-to-image.
    MAX_REFERENCES: ClassVar[int] = 0
    #: ``image_size`` when the request gives none (and the published default is not given).
    DEFAULT_SIZE: ClassVar[str] = DEFAULT_PRESET

    prompt: str
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
    image_size: ImageSize | ImageSizePreset | None
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
        """The references the request uses: none for text-to-image."""
        return []

    def inference_steps(self) -> int | None:
        """The step count asked for; None: the regime's own (the flash/turbo endpoints)."""
        return None

    def acceleration_level(self) -> Acceleration:
        """fal's ``acceleration`` (the flash/turbo endpoints have none: ``regular``)."""
        return "regular"

    def lora_inputs(self) -> list[LoRAInput]:
        """The LoRAs asked for (only the lora endpoints take any)."""
        return []

    def output_size(self) -> PixelSize:
        """``image_size`` in pixels (its bounds were checked by the schema)."""
        size = self.image_size
        if size is None:
            return PRESETS[self.DEFAULT_SIZE]
        if isinstance(size, str):
            return PRESETS[size]
        return PixelSize(size.width, size.height)


class _References(BaseModel):
    """Reference images: an edit endpoint."""

    image_urls: list[str]

    def used_image_urls(self) -> list[str]:
        """The references the edit uses: the first few, as fal documents."""
        limit: int = getattr(self, "MAX_REFERENCES", MAX_REFERENCES)
        return self.image_urls[:limit]


class _BaseSteps(BaseModel):
    """FLUX.2 [dev]'s own schedule: a step count and an acceleration level."""

    num_inference_steps: int = Field(
        default=BASE_STEPS,
        ge=MIN_STEPS,
        le=MAX_STEPS,
        description="The number of inference steps to perform.",
    )
    acceleration: Acceleration = Field(
        default="regular",
        description="The acceleration level to use for the image generation.",
    )

    def inference_steps(self) -> int | None:
        return self.num_inference_steps

    def acceleration_level(self) -> Acceleration:
        return self.acceleration


class _Loras(BaseModel):
    """Per-request LoRAs (up to three)."""

    loras: list[LoRAInput] = Field(
        default_factory=list,
        description=f"List of LoRA weights to apply (maximum {MAX_LORAS}). Each LoRA can be a "
        "URL, HuggingFace repo ID, or local path.",
    )

    @field_validator("loras")
    @classmethod
    def _at_most_three(cls, value: list[LoRAInput]) -> list[LoRAInput]:
        if len(value) > MAX_LORAS:
            raise PydanticCustomError(
                "too_long",
                "List should have at most {max_length} items after validation, not {actual_length}",
                {"field_type": "List", "max_length": MAX_LORAS, "actual_length": len(value)},
            )
        return value

    def lora_inputs(self) -> list[LoRAInput]:
        return list(self.loras)


# -- the inputs -----------------------------------------------------------------------------------


class Flux2FlashEditInput(_References, Flux2InputBase):
    """``fal-ai/flux-2/flash/edit`` and ``fal-ai/flux-2/turbo/edit`` (``Flux2TurboEditInput`` is
    the same type)."""

    model_config = ConfigDict(
        title="Flux2FlashEditInput",
        json_schema_extra={
            **_order(*COMMON_ORDER, "image_urls"),
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
    MAX_REFERENCES: ClassVar[int] = MAX_REFERENCES
    DEFAULT_SIZE: ClassVar[str] = "square_hd"

    prompt: str = prompt_field(EDIT_PROMPT)
    image_size: ImageSize | ImageSizePreset | None = image_size_field("square_hd")
    image_urls: list[str] = image_urls_field(MAX_REFERENCES)


class Flux2FlashInput(Flux2InputBase):
    """``fal-ai/flux-2/flash`` and ``fal-ai/flux-2/turbo``: text-to-image, 8 steps."""

    model_config = ConfigDict(
        title="Flux2FlashInput",
        json_schema_extra={
            **_order(*COMMON_ORDER),
            "examples": [
                {"prompt": "A red fox in fresh snow, golden hour", "image_size": "square"}
            ],
        },
    )
    DEFAULT_SIZE: ClassVar[str] = "landscape_4_3"

    prompt: str = prompt_field(GENERATE_PROMPT)
    image_size: ImageSize | ImageSizePreset | None = image_size_field("landscape_4_3")


class Flux2Input(_BaseSteps, Flux2InputBase):
    """``fal-ai/flux-2``: text-to-image on FLUX.2 [dev]'s own schedule."""

    model_config = ConfigDict(
        title="Flux2Input",
        json_schema_extra={
            **_order(*COMMON_ORDER, "num_inference_steps", "acceleration"),
            "examples": [{"prompt": "A red fox in fresh snow", "num_inference_steps": 28}],
        },
    )
    DEFAULT_SIZE: ClassVar[str] = "landscape_4_3"

    prompt: str = prompt_field(GENERATE_PROMPT)
    image_size: ImageSize | ImageSizePreset | None = image_size_field("landscape_4_3")


class Flux2EditInput(_BaseSteps, _References, Flux2InputBase):
    """``fal-ai/flux-2/edit``: up to 4 references, FLUX.2 [dev]'s own schedule. fal publishes no
    ``image_size`` default; an unset size is ``square_hd`` here."""

    model_config = ConfigDict(
        title="Flux2EditInput",
        json_schema_extra={
            **_order(*COMMON_ORDER, "num_inference_steps", "acceleration", "image_urls"),
            "examples": [
                {
                    "prompt": "Change his clothes to casual suit and tie",
                    "image_urls": ["https://example.com/input.png"],
                    "num_inference_steps": 28,
                }
            ],
        },
    )
    MAX_REFERENCES: ClassVar[int] = MAX_REFERENCES
    DEFAULT_SIZE: ClassVar[str] = "square_hd"

    prompt: str = prompt_field(EDIT_PROMPT)
    image_size: ImageSize | ImageSizePreset | None = image_size_field(None)
    image_urls: list[str] = image_urls_field(MAX_REFERENCES)


class Flux2LoraInput(_Loras, _BaseSteps, Flux2InputBase):
    """``fal-ai/flux-2/lora``: text-to-image with up to 3 LoRAs."""

    model_config = ConfigDict(
        title="Flux2LoraInput",
        json_schema_extra={
            **_order(*COMMON_ORDER, "num_inference_steps", "acceleration", "loras"),
            "examples": [
                {
                    "prompt": "A red fox in fresh snow",
                    "loras": [{"path": "https://example.com/style.safetensors", "scale": 1}],
                }
            ],
        },
    )
    DEFAULT_SIZE: ClassVar[str] = "landscape_4_3"

    prompt: str = prompt_field(GENERATE_PROMPT)
    image_size: ImageSize | ImageSizePreset | None = image_size_field("landscape_4_3")


#: References ``fal-ai/flux-2/lora/edit`` uses (fal: 3, one fewer than the other edits).
LORA_EDIT_REFERENCES = 3


class Flux2LoraEditInput(_Loras, _BaseSteps, _References, Flux2InputBase):
    """``fal-ai/flux-2/lora/edit``: up to 3 references and up to 3 LoRAs."""

    model_config = ConfigDict(
        title="Flux2LoraEditInput",
        json_schema_extra={
            **_order(*COMMON_ORDER, "num_inference_steps", "acceleration", "loras", "image_urls"),
            "examples": [
                {
                    "prompt": "Change his clothes to casual suit and tie",
                    "image_urls": ["https://example.com/input.png"],
                    "loras": [{"path": "https://example.com/style.safetensors", "scale": 1}],
                }
            ],
        },
    )
    MAX_REFERENCES: ClassVar[int] = LORA_EDIT_REFERENCES
    DEFAULT_SIZE: ClassVar[str] = "square_hd"

    prompt: str = prompt_field(GENERATE_PROMPT)
    image_size: ImageSize | ImageSizePreset | None = image_size_field(None)
    image_urls: list[str] = Field(
        min_length=1,
        description=f"The URsL of the images for editing. A maximum of {LORA_EDIT_REFERENCES} "
        f"images are allowed, if more are provided, only the first {LORA_EDIT_REFERENCES} will "
        "be used.",
    )


# -- the outputs ----------------------------------------------------------------------------------


class ImageFile(BaseModel):
    url: str = Field(description="The URL where the file can be downloaded from.")
    content_type: str | None = Field(default=None, description="The mime type of the file.")
    file_name: str | None = Field(default=None, description="The name of the file.")
    file_size: int | None = Field(default=None, description="The size of the file in bytes.")
    width: int | None = Field(default=None, description="The width of the image in pixels.")
    height: int | None = Field(default=None, description="The height of the image in pixels.")


class Flux2Output(BaseModel):
    """What every FLUX.2 [dev] endpoint answers (``Flux2FlashEditOutput`` is the same shape)."""

    model_config = ConfigDict(title="Flux2Output")

    images: list[ImageFile] = Field(description="The generated images")
    timings: dict[str, float] = Field(description="The timings of the generation process.")
    seed: int = Field(description="Seed of the generated Image.")
    has_nsfw_concepts: list[bool] = Field(
        description="Whether the generated images contain NSFW concepts."
    )
    prompt: str = Field(description="The prompt used for generating the image.")


class Flux2FlashEditOutput(Flux2Output):
    model_config = ConfigDict(title="Flux2FlashEditOutput")

    images: list[ImageFile] = Field(description="The edited images")


def input_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is ``model`` (routes validate the input by hand,
    after the API key check, so they point the request body at the component
    :func:`openapi_components` adds)."""
    title = model.model_config.get("title") or model.__name__
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{title}"}}},
        }
    }


#: The flash edit's body (kept for callers that know one endpoint).
INPUT_BODY_SCHEMA = input_body_schema(Flux2FlashEditInput)


def openapi_components(
    models: tuple[type[BaseModel], ...] = (Flux2FlashEditInput,),
) -> dict[str, Any]:
    """JSON schemas of the input ``models`` and the models they use, as OpenAPI components."""
    components: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        used = getattr(model, "MAX_REFERENCES", 0)
        if used:  # how many references the endpoint uses (fal says so in prose only)
            schema["x-flux2-max-references"] = used
        components[model.model_config.get("title") or model.__name__] = schema
    return components
