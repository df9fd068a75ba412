"""The endpoints this server answers: one table from endpoint id to everything that differs.

Each :class:`Endpoint` names its input and output models, its mode (text-to-image or edit), its
regime (``turbo``: the 8-step distilled recipe; ``base``: FLUX.2 [dev]'s own schedule), its step
policy, its adapter policy and how many references it uses. Routes (sync run, queue submit, both
request-route forms), the OpenAPI document, validation, batching keys (through the
:class:`~pipelines.types.EditRequest` each input becomes), metrics labels, the playground and the
OpenAI models are derived from :data:`ENDPOINTS`; adding an endpoint is one entry here (plus its
input model in :mod:`service.schema`, when no existing one fits).

Jobs record their endpoint, so a worker parses a stored input back into the right model.
``FLUX2_ENDPOINTS`` enables a subset (:func:`enabled_endpoints`); the regimes the engine must
serve follow from it (:func:`regimes_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from core.errors import ConfigError, NotFound
from pipelines.types import Acceleration, Regime
from service.schema import (
    APP_ID,
    Flux2EditInput,
    Flux2FlashEditInput,
    Flux2FlashEditOutput,
    Flux2FlashInput,
    Flux2Input,
    Flux2InputBase,
    Flux2LoraEditInput,
    Flux2LoraInput,
    Flux2Output,
)

#: The input of any endpoint (each endpoint's model is a subclass).
EndpointInput = Flux2InputBase
#: What an endpoint makes: images from text alone, or edits of reference images.
Mode = Literal["text-to-image", "edit"]
#: How the step count is chosen: ``regime``: the regime's own (8 turbo steps);
#: ``request``: the input's ``num_inference_steps`` (the base endpoints).
StepPolicy = Literal["regime", "request"]
#: Which adapters apply: ``none``, or the input's ``loras`` (the lora endpoints).
AdapterPolicy = Literal["none", "request"]


@dataclass(frozen=True)
class EngineOptions:
    """What an endpoint's input asks of the engine beyond prompt, images and size."""

    regime: Regime
    steps: int | None
    acceleration: Acceleration


@dataclass(frozen=True)
class Endpoint:
    """One fal endpoint: ``POST /{id}`` (sync run) and ``POST /queue/{id}`` (submit).

    Args:
        id: fal's endpoint id, e.g. ``fal-ai/flux-2/flash/edit``.
        input_model: the body's model; the edge parses it once, the job carries it.
        output_model: the result's model.
        mode: text-to-image (no references) or edit.
        regime: the denoising recipe (see :data:`pipelines.types.Regime`).
        steps: the step policy (see :data:`StepPolicy`).
        adapters: the adapter policy (see :data:`AdapterPolicy`).
        summary: one line for the OpenAPI document and the playground.
        app_id: the app part of the id (``fal-ai/flux-2``): the request routes live under it.
    """

    id: str
    input_model: type[Flux2InputBase]
    output_model: type[BaseModel]
    mode: Mode
    regime: Regime
    steps: StepPolicy
    adapters: AdapterPolicy
    summary: str
    app_id: str = APP_ID

    @property
    def max_references(self) -> int:
        """References a request may use (0: text-to-image); more are ignored, as fal's are."""
        return self.input_model.MAX_REFERENCES

    @property
    def slug(self) -> str:
        """The id as a name (operation ids, OpenAI aliases): ``flux-2-flash-edit``."""
        return self.id.removeprefix("fal-ai/").replace("/", "-")

    def engine_options(self, fal_input: Flux2InputBase) -> EngineOptions:
        """The regime, step count and acceleration ``fal_input`` runs with on this endpoint."""
        if self.steps == "request":
            return EngineOptions(
                self.regime, fal_input.inference_steps(), fal_input.acceleration_level()
            )
        return EngineOptions(self.regime, None, "regular")


def _endpoint(
    id: str,  # noqa: A002 - fal's name
    input_model: type[Flux2InputBase],
    regime: Regime,
    summary: str,
    *,
    output_model: type[BaseModel] = Flux2Output,
    adapters: AdapterPolicy = "none",
) -> Endpoint:
    return Endpoint(
        id=id,
        input_model=input_model,
        output_model=output_model,
        mode="edit" if input_model.MAX_REFERENCES else "text-to-image",
        regime=regime,
        steps="regime" if regime == "turbo" else "request",
        adapters=adapters,
        summary=summary,
    )


FLASH_EDIT = _endpoint(
    "fal-ai/flux-2/flash/edit",
    Flux2FlashEditInput,
    "turbo",
    "FLUX.2 [dev] flash edit: 1-4 reference images and a prompt, 8 steps",
    output_model=Flux2FlashEditOutput,
)

#: Every endpoint this server can answer, in the order the docs, the playground and the OpenAI
#: model list show them (the first of each mode is that mode's default model).
ENDPOINTS: dict[str, Endpoint] = {
    endpoint.id: endpoint
    for endpoint in (
        FLASH_EDIT,
        _endpoint(
            "fal-ai/flux-2/flash",
            Flux2FlashInput,
            "turbo",
            "FLUX.2 [dev] flash: text-to-image, 8 steps",
        ),
        _endpoint(
            "fal-ai/flux-2/turbo",
            Flux2FlashInput,
            "turbo",
            "FLUX.2 [dev] turbo: text-to-image, 8 steps",
        ),
        _endpoint(
            "fal-ai/flux-2/turbo/edit",
            Flux2FlashEditInput,
            "turbo",
            "FLUX.2 [dev] turbo edit: 1-4 reference images and a prompt, 8 steps",
        ),
        _endpoint(
            "fal-ai/flux-2",
            Flux2Input,
            "base",
            "FLUX.2 [dev]: text-to-image, num_inference_steps (default 28)",
        ),
        _endpoint(
            "fal-ai/flux-2/edit",
            Flux2EditInput,
            "base",
            "FLUX.2 [dev] edit: 1-4 reference images, num_inference_steps (default 28)",
        ),
        _endpoint(
            "fal-ai/flux-2/lora",
            Flux2LoraInput,
            "base",
            "FLUX.2 [dev] with LoRAs: text-to-image, up to 3 LoRAs",
            adapters="request",
        ),
        _endpoint(
            "fal-ai/flux-2/lora/edit",
            Flux2LoraEditInput,
            "base",
            "FLUX.2 [dev] edit with LoRAs: 1-3 reference images, up to 3 LoRAs",
            adapters="request",
        ),
    )
}
DEFAULT_ENDPOINT = FLASH_EDIT
#: ``FLUX2_ENDPOINTS`` values that mean every endpoint.
ALL = ("", "all", "*")


def get_endpoint(endpoint_id: str) -> Endpoint:
    """The endpoint named ``endpoint_id``. Raises ``NotFound`` for one this server lacks."""
    try:
        return ENDPOINTS[endpoint_id]
    except KeyError:
        raise NotFound(f"Endpoint {endpoint_id} is not served here") from None


def enabled_endpoints(text: str) -> tuple[Endpoint, ...]:
    """The endpoints ``FLUX2_ENDPOINTS`` enables: a comma-separated list of ids (in the table's
    order), or every endpoint when empty or ``all``. Raises ``ConfigError`` for an unknown id."""
    names = [name.strip().strip("/") for name in text.split(",") if name.strip()]
    if not names or any(name.lower() in ALL for name in names):
        return tuple(ENDPOINTS.values())
    unknown = [name for name in names if name not in ENDPOINTS]
    if unknown:
        raise ConfigError(
            f"FLUX2_ENDPOINTS names unknown endpoints: {', '.join(unknown)}; "
            f"known: {', '.join(ENDPOINTS)}"
        )
    return tuple(endpoint for endpoint in ENDPOINTS.values() if endpoint.id in names)


def regimes_of(endpoints: Iterable[Endpoint]) -> frozenset[Regime]:
    """The regimes the engine must serve for ``endpoints`` (``{"turbo"}`` alone lets it fuse
    the Turbo LoRA)."""
    return frozenset(endpoint.regime for endpoint in endpoints)
