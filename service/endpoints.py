"""The endpoints this server answers: one table from endpoint id to its input and output models.

Routes, the OpenAPI document, jobs (which record their endpoint, so a worker parses a stored input
back into the right model) and the worker read it from here; adding an endpoint starts with an
entry in :data:`ENDPOINTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from core.errors import NotFound
from service.schema import APP_ID, ENDPOINT_ID, Flux2FlashEditInput, Flux2FlashEditOutput

#: The input every endpoint served today takes (the family's other inputs join this union).
EndpointInput = Flux2FlashEditInput


@dataclass(frozen=True)
class Endpoint:
    """One fal endpoint: ``POST /{id}`` (sync run) and ``POST /queue/{id}`` (submit).

    Args:
        id: fal's endpoint id, e.g. ``fal-ai/flux-2/flash/edit``.
        app_id: the app part of the id (``fal-ai/flux-2``): the request routes live under it.
        input_model: the body's model; the edge parses it once, the job carries it.
        output_model: the result's model.
        summary: one line for the OpenAPI document.
    """

    id: str
    app_id: str
    input_model: type[EndpointInput]
    output_model: type[BaseModel]
    summary: str


FLASH_EDIT = Endpoint(
    id=ENDPOINT_ID,
    app_id=APP_ID,
    input_model=Flux2FlashEditInput,
    output_model=Flux2FlashEditOutput,
    summary="FLUX.2 [dev] flash edit: 1-4 reference images and a prompt, 8 steps",
)

ENDPOINTS: dict[str, Endpoint] = {endpoint.id: endpoint for endpoint in (FLASH_EDIT,)}
DEFAULT_ENDPOINT = FLASH_EDIT


def get_endpoint(endpoint_id: str) -> Endpoint:
    """The endpoint named ``endpoint_id``. Raises ``NotFound`` for one this server lacks."""
    try:
        return ENDPOINTS[endpoint_id]
    except KeyError:
        raise NotFound(f"Endpoint {endpoint_id} is not served here") from None
