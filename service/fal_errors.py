"""Rendering our errors in fal's shapes (docs/reference/fal-protocol.md §12), once, for every path.

The HTTP error handlers use these bodies directly; finished jobs get them through
:mod:`service.outcomes`.

* request validation and model input errors: ``{"detail": [{loc, msg, type, url, ctx, input}]}``
* everything else: ``{"detail": "<message>", "error_type": "<code>"}`` plus ``X-Fal-Error-Type``
"""

from __future__ import annotations

import math
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
        "loc": [_jsonable(part) for part in loc],
        "msg": _utf8(msg),
        "type": _utf8(type_),
        "url": _utf8(DOCS_URL.format(type=type_)),
    }
    if ctx:
        body["ctx"] = _jsonable(ctx)
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
    return {"detail": _utf8(exc.message), "error_type": exc.code}


#: Deeper values in an error's ``input`` or ``ctx`` are cut (bodies are at most 32 deep).
MAX_RENDER_DEPTH = 64
#: Integers longer than this are shown by their size: CPython will not print them (4300 digits).
MAX_RENDER_INT_BITS = 10_000


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as something strict JSON (and UTF-8) can always write: an error must never
    fail to render (non-finite floats, lone surrogates, bytes, huge integers, deep nesting)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_RENDER_INT_BITS:
            return f"<an integer of {value.bit_length()} bits>"
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if depth >= MAX_RENDER_DEPTH:
        return "…"
    if isinstance(value, list | tuple):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_utf8(str(k)): _jsonable(v, depth + 1) for k, v in value.items()}
    return _utf8(str(value))


def _utf8(text: str) -> str:
    """``text``, with anything UTF-8 cannot encode (lone surrogates) written as ``\\udXXX``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
