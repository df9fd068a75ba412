"""The checks an :class:`~pipelines.types.EditRequest` passes before an engine runs it.

A request checks its own fields when it is made (:func:`pipelines.types.check_fields`, called
by ``EditRequest.__post_init__``), so an engine can trust every request it is given and does not
check it again. What depends on the engine's reference size (a reference too elongated or too
small to resize) is checked here, by :func:`validate_request`; engines find the same problem
when they group a batch, before any model work. Callers that use an engine as a library call
:func:`validate_request` to learn about a bad request before the engine does.
"""

from __future__ import annotations

from pipelines.types import EditRequest, check_fields


def validate_request(request: EditRequest, *, target_pixels: int) -> None:
    """Raise :class:`~core.errors.InvalidRequest` naming the field when ``request`` cannot run
    on an engine that resizes references to about ``target_pixels``."""
    check_fields(request)
    request.reference_sizes(target_pixels)  # raises on unusable reference shapes
