"""Request bodies as strict JSON (RFC 8259): what :func:`json.loads` lets through is refused here.

Python's parser accepts more than JSON: ``NaN``, ``Infinity`` and ``-Infinity`` (what
``json.dumps`` writes for non-finite floats), numbers too large for a float (they become
``inf``), duplicate keys (the last one silently wins), lone surrogates (``"\\ud800"``: a string
no UTF-8 encoder can write back), and any nesting depth its stack allows. Each of those either
made a 500 later (rendering a non-finite number or a lone surrogate back to JSON) or silently
changed the request. :func:`loads` refuses them all with :class:`InvalidJson`, which the routes
answer as fal's 422 ``json_invalid``.

It also decodes the body as UTF-8 only (the one encoding RFC 8259 allows between systems; a
UTF-8 byte order mark is ignored, as the RFC permits), caps integers at
:data:`MAX_INT_DIGITS` digits (CPython refuses more than 4300 with a message about
``sys.set_int_max_str_digits``) and nesting at :data:`MAX_DEPTH` levels (the flash/edit input
needs 3), so that every value a body can hold can be rendered back in an error.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

#: Objects and arrays nested deeper than this are refused (the input needs 3 levels).
MAX_DEPTH = 32
#: Integers with more digits than this are refused (no field of ours takes more than 19).
MAX_INT_DIGITS = 1000

_BOM = b"\xef\xbb\xbf"


class InvalidJson(ValueError):
    """The body is not strict JSON: ``reason`` says why, ``position`` (a character offset in
    the decoded text) where, when the parser knows it."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def loads(raw: bytes) -> Any:
    """``raw`` parsed as strict JSON. Raises :class:`InvalidJson`."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(
            f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})", exc.start
        ) from None
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_object_without_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise InvalidJson(exc.msg, exc.pos) from None
    except RecursionError:
        raise InvalidJson(_too_deep()) from None
    _check_depth_and_strings(value)
    return value


def _refuse_constant(name: str) -> NoReturn:
    raise InvalidJson(f"{name} is not a JSON value (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidJson(f"the number {_excerpt(text)} is out of range (numbers must be finite)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidJson(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidJson(f"duplicate key {_excerpt(key)!r} in an object")
        result[key] = value
    return result


def _check_depth_and_strings(value: Any) -> None:
    """Refuses nesting deeper than :data:`MAX_DEPTH` and strings UTF-8 cannot encode."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_encodable(item)
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise InvalidJson(_too_deep())
            if isinstance(item, dict):
                for key in item:
                    _check_encodable(key)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJson(
            f"a string holds a lone surrogate (\\u{ord(text[exc.start]):04x}), which is not "
            "a Unicode character"
        ) from None


def _too_deep() -> str:
    return f"objects and arrays are nested more than {MAX_DEPTH} levels deep"


def _excerpt(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
