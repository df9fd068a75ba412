"""Rendering our errors in fal's shapes (docs/reference/fal-protocol.md §12), once, for every path.

The HTTP error handlers use these bodies directly; finished jobs get them through
:mod:`service.outcomes`.

* request validation and model input errors: ``{"detail": [{loc, msg, type, url, ctx, input}]}``
* everything else: ``{"detail": "<message>", "error_type": "<code>"}`` plus ``X-Fal-Error-Type``
"""

from __future__ import annotations

from typing import Any

from core.errors import Flux2Error, InvalidRequest

DOCS_URL = "https://docs.fal.ai/errors/#{type}"


def problem_json(
    loc: tuple[str | int, ...] | list[str | int],
    msg: str,
    type_: str,
    ctx: dict[str, Any] | None = None,
    input_: Any = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "loc": list(loc),
        "msg": msg,
        "type": type_,
        "url": DOCS_URL.format(type=type_),
    }
    if ctx:
        body["ctx"] = {k: _jsonable(v) for k, v in ctx.items()}
    if input_ is not None:
        body["input"] = _jsonable(input_)
    return body


def pydantic_problems(errors: list[Any], prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """pydantic's ``exc.errors()`` in fal's form (fal's SDK returns them as they are, plus url).

    ``prefix`` is prepended to each ``loc`` (``("body",)`` for a model validated by hand).
    """
    return [
        problem_json(
            (*prefix, *error["loc"]),
            error["msg"],
            error["type"],
            error.get("ctx"),
            error.get("input"),
        )
        for error in errors
    ]


def error_body(exc: Flux2Error) -> dict[str, Any]:
    if isinstance(exc, InvalidRequest):
        return {
            "detail": [problem_json(p.loc, p.msg, p.type, p.ctx, p.input) for p in exc.problems]
        }
    return {"detail": exc.message, "error_type": exc.code}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
