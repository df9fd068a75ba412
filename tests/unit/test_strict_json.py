"""Request bodies are strict JSON (service/strict_json.py), and an error always renders
(service/fal_errors.py), whatever odd value it carries."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import InvalidRequest
from service.fal_errors import error_body, problem_json
from service.strict_json import MAX_DEPTH, MAX_INT_DIGITS, InvalidJson, loads


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": 1, "b": [1.5, -2, true, null, "x"]}', {"a": 1, "b": [1.5, -2, True, None, "x"]}),
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),  # a UTF-8 byte order mark is ignored (RFC 8259)
        ('{"a": "café \\ud83c\\udfa8"}'.encode(), {"a": "café \U0001f3a8"}),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)),
        (b"-" + b"9" * MAX_INT_DIGITS, -int("9" * MAX_INT_DIGITS)),
        (b"1e308", 1e308),
        (b'{"a": {"a": 1}}', {"a": {"a": 1}}),  # the same key in different objects is fine
    ],
    ids=["plain", "bom", "non-ascii", "max-depth", "max-digits", "large-float", "nested-same-key"],
)
def test_strict_json_accepts(raw: bytes, value: Any) -> None:
    assert loads(raw) == value


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"a": NaN}', "NaN is not a JSON value"),
        (b"[Infinity]", "Infinity is not a JSON value"),
        (b"[-Infinity]", "-Infinity is not a JSON value"),
        (b"[1e400]", "the number 1e400 is out of range"),
        (b"[-1e400]", "the number -1e400 is out of range"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'[{"b": {"a": 1, "a": 1}}]', "duplicate key 'a'"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), f"more than {MAX_DEPTH} levels"),
        (b"[" * 100_000 + b"]" * 100_000, f"more than {MAX_DEPTH} levels"),
        (b"[" + b"9" * (MAX_INT_DIGITS + 1) + b"]", f"more than {MAX_INT_DIGITS} digits"),
        (b"[" + b"9" * 5000 + b"]", f"more than {MAX_INT_DIGITS} digits"),
        (b'["\xff"]', "not valid UTF-8 (byte 2"),
        ('{"a": "é"}'.encode("latin-1"), "not valid UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "not valid UTF-8"),
        (b'["\\ud800"]', "lone surrogate (\\ud800)"),
        (b'{"\\udfff": 1}', "lone surrogate (\\udfff)"),
        (b'["\\ude00\\ud83d"]', "lone surrogate"),  # a pair in the wrong order
        (b'{"a": ', "Expecting value"),
        (b"", "Expecting value"),
    ],
    ids=[
        "nan",
        "infinity",
        "minus-infinity",
        "overflow",
        "minus-overflow",
        "duplicate",
        "nested-duplicate",
        "depth",
        "deep-recursion",
        "digits",
        "python-digit-limit",
        "invalid-utf8",
        "latin-1",
        "utf-16",
        "lone-surrogate",
        "lone-surrogate-key",
        "reversed-pair",
        "truncated",
        "empty",
    ],
)
def test_strict_json_refuses(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidJson) as refused:
        loads(raw)
    assert reason in refused.value.reason


def test_a_decode_error_says_where() -> None:
    with pytest.raises(InvalidJson) as refused:
        loads(b'{"a": 1,, }')
    assert refused.value.position == 8


ODD_VALUES: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    "lone \ud800 surrogate",
    b"\xff\x00bytes",
    10**5000,  # CPython will not even print it
    json.loads("[" * 200 + "1" + "]" * 200),  # deeper than any body can be
    {"\udc00": object()},
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
def test_an_error_with_an_odd_value_still_renders(value: Any) -> None:
    problem = problem_json(
        ("body", "x\ud800"), "bad value \ud800", "value_error", {"v": value}, value
    )
    text = json.dumps(problem, allow_nan=False, ensure_ascii=False)  # as JSONResponse renders
    text.encode("utf-8")
    assert problem["loc"] == ["body", "x\\ud800"]


def test_an_error_message_with_a_lone_surrogate_renders() -> None:
    body = error_body(InvalidRequest("bad \ud800", input="\ud800"))
    json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert body["detail"][0]["msg"] == "bad \\ud800"
