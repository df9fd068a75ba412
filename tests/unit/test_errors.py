"""The error hierarchy: fal codes, HTTP statuses and field problems (core/errors.py)."""

from __future__ import annotations

import dataclasses

import pytest

from core.errors import (
    Cancelled,
    ConfigError,
    FieldProblem,
    FileDownloadError,
    Flux2Error,
    GenerationFailed,
    ImageLoadError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidRequest,
    NotFound,
    StorageError,
    UnsupportedImageFormat,
    WeightsError,
    WorkerDead,
)

TABLE = [
    (Flux2Error, "internal_error", 500),
    (InvalidRequest, "value_error", 422),
    (ImageLoadError, "image_load_error", 422),
    (UnsupportedImageFormat, "unsupported_image_format", 422),
    (ImageTooLarge, "image_too_large", 422),
    (ImageTooSmall, "image_too_small", 422),
    (FileDownloadError, "file_download_error", 422),
    (NotFound, "not_found", 404),
    (Cancelled, "client_cancelled", 499),
    (GenerationFailed, "internal_server_error", 500),
    (WorkerDead, "runner_connection_error", 503),
    (StorageError, "internal_error", 500),
    (WeightsError, "weights_error", 500),
    (ConfigError, "config_error", 500),
]


@pytest.mark.parametrize(("cls", "code", "status"), TABLE)
def test_code_and_status(cls: type[Flux2Error], code: str, status: int) -> None:
    assert cls.code == code
    assert cls.http_status == status
    error = cls("boom")
    assert error.code == code
    assert error.http_status == status
    assert error.message == "boom"
    assert str(error) == "boom"
    assert isinstance(error, Flux2Error)
    assert isinstance(error, Exception)


@pytest.mark.parametrize(
    "cls", [ImageLoadError, UnsupportedImageFormat, ImageTooLarge, ImageTooSmall, FileDownloadError]
)
def test_image_errors_are_invalid_requests(cls: type[InvalidRequest]) -> None:
    assert issubclass(cls, InvalidRequest)
    error = cls("bad image", loc=("body", "image_urls", 1))
    problem = error.problems[0]
    assert problem.type == cls.code
    assert problem.loc == ("body", "image_urls", 1)


@pytest.mark.parametrize(
    "cls", [NotFound, Cancelled, GenerationFailed, WorkerDead, StorageError, WeightsError]
)
def test_other_errors_are_not_invalid_requests(cls: type[Flux2Error]) -> None:
    assert not issubclass(cls, InvalidRequest)


def test_invalid_request_carries_one_problem() -> None:
    error = InvalidRequest(
        "Input should be greater than or equal to 512",
        loc=("body", "image_size", "width"),
        type="greater_than_equal",
        ctx={"ge": 512},
        input=100,
    )
    assert error.problems == [
        FieldProblem(
            loc=("body", "image_size", "width"),
            msg="Input should be greater than or equal to 512",
            type="greater_than_equal",
            ctx={"ge": 512},
            input=100,
        )
    ]


def test_custom_type_overrides_the_class_code_only_in_the_problem() -> None:
    error = FileDownloadError("x", type="something_else")
    assert error.problems[0].type == "something_else"
    assert error.code == "file_download_error"


def test_invalid_request_defaults() -> None:
    error = InvalidRequest("nope")
    (problem,) = error.problems
    assert problem.loc == ("body",)
    assert problem.msg == "nope"
    assert problem.type == "value_error"
    assert problem.ctx == {}
    assert problem.input is None


def test_default_ctx_is_not_shared() -> None:
    a, b = InvalidRequest("a"), InvalidRequest("b")
    a.problems[0].ctx["x"] = 1
    assert b.problems[0].ctx == {}


def test_field_problem_is_frozen() -> None:
    problem = FieldProblem(loc=("body",), msg="m", type="t")
    assert problem.ctx == {}
    assert problem.input is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.msg = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InvalidRequest("bad 'x'"), "InvalidRequest(code='value_error', message=\"bad 'x'\")"),
        (WorkerDead("gpu lost"), "WorkerDead(code='runner_connection_error', message='gpu lost')"),
        (NotFound("no job"), "NotFound(code='not_found', message='no job')"),
    ],
)
def test_repr(error: Flux2Error, expected: str) -> None:
    assert repr(error) == expected


def test_raise_and_catch_by_base() -> None:
    with pytest.raises(Flux2Error) as exc_info:
        raise ImageTooLarge("huge", ctx={"max_width": 8192})
    assert exc_info.value.problems[0].ctx == {"max_width": 8192}  # type: ignore[attr-defined]
