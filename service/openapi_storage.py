"""What the storage routes (:mod:`service.routes.storage`) answer, for the OpenAPI document.

Three ways in, each with its own proof: the API key (starting an upload, the upload token,
reading an upload back), a signed upload URL (its ``token`` query parameter names the upload:
the JS client sends the bytes with no key) and an upload token (``Authorization: Bearer``,
Python's ``fal_v3`` uploads). The last two are checked whether or not API keys are configured,
so their 401 and security schemes are always in the document. Errors are fal's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from service.openapi_errors import (
    ERROR_TYPE_HEADER,
    INVALID,
    QUEUE_UNAVAILABLE,
    TOO_LARGE,
    error_response,
    header,
    json_response,
)

#: Security schemes of the upload routes that take no API key (always declared).
SIGNED_URL_SCHEME = "SignedUploadUrl"
UPLOAD_TOKEN_SCHEME = "UploadToken"
SCHEMES: dict[str, dict[str, Any]] = {
    SIGNED_URL_SCHEME: {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The token in the `upload_url` that `POST /storage/upload/initiate` "
        "answers: it names the upload, its owner and an expiry (15 minutes).",
    },
    UPLOAD_TOKEN_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "The `token` that `POST /storage/auth/token` answers.",
    },
}


class UploadUrls(BaseModel):
    """Where to send the bytes, and the URL the file will have (for `image_urls`)."""

    upload_url: str = Field(description="PUT the bytes here, with no key (the URL is signed).")
    file_url: str


class _Stored(BaseModel):
    content_type: str = Field(description="As sniffed from the bytes: `image/png`, …")
    file_size: int = Field(ge=0)
    url: str


class SignedUploadDone(_Stored):
    """An upload stored through its signed URL."""

    file_url: str


class FileUploaded(_Stored):
    """An upload stored with an upload token."""

    access_url: str


class UploadPart(BaseModel):
    """One part of a multipart upload, stored: send its number and ETag to `…/complete`."""

    partNumber: int = Field(ge=1)  # noqa: N815 -- the clients' name
    etag: str


class UploadToken(BaseModel):
    """A token for `POST /files/upload` (send it as `Authorization: Bearer <token>`)."""

    token: str
    token_type: Literal["Bearer"]
    base_url: str
    expires_at: str = Field(description="ISO 8601, with its time zone.")


class MultipartStarted(BaseModel):
    """A multipart upload with an upload token: PUT parts to `<access_url>/multipart/<id>/<n>`."""

    access_url: str
    uploadId: str  # noqa: N815 -- the clients' name


MODELS: tuple[type[BaseModel], ...] = (
    UploadUrls,
    SignedUploadDone,
    FileUploaded,
    UploadPart,
    UploadToken,
    MultipartStarted,
)

BINARY = {"schema": {"type": "string", "format": "binary"}}
#: The bytes of an upload: any Content-Type (the bytes are sniffed; images only).
BYTES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file's bytes: a PNG, JPEG, WebP or GIF image (sniffed from the "
        "bytes, whatever the Content-Type says), at most `FLUX2_UPLOAD_MAX_BYTES`.",
        "content": {"application/octet-stream": BINARY},
    }
}
SIGNED: list[dict[str, list[str]]] = [{SIGNED_URL_SCHEME: []}]
TOKEN: list[dict[str, list[str]]] = [{UPLOAD_TOKEN_SCHEME: []}]

_BAD_SIGNATURE = error_response(
    "The signed URL's token is missing, forged, for another upload, or expired (`unauthorized`).",
    **{"WWW-Authenticate": header("`Key`", required=True)},
)
_BAD_TOKEN = error_response(
    "No upload token, or a forged or expired one (`unauthorized`).",
    **{"WWW-Authenticate": header("`Key`", required=True)},
)
_NO_UPLOAD = error_response("No such upload (or not begun as multipart, or another key's).")
_NOT_STORED = json_response(
    INVALID["content"]["application/json"]["schema"],
    "fal's validation error: the body is not JSON or not the expected object, the bytes are "
    "not an image (`image_load_error`, `unsupported_image_format`), or a part is missing, "
    "unknown or has another ETag.",
    ERROR_TYPE_HEADER,
)
_UPLOAD_TOO_LARGE = error_response(
    "The body (or the upload, or a part) is larger than its limit (`request_too_large`)."
)


def _part(description: str) -> dict[str, Any]:
    answer = json_response(UploadPart, description)
    answer["headers"] = {"ETag": header("The part's ETag, quoted.", required=True)}
    return answer


INITIATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(UploadUrls, "Where to PUT the bytes, and the file's URL."),
    413: TOO_LARGE,
    422: INVALID,
}
INITIATE_MULTIPART_RESPONSES: dict[int | str, dict[str, Any]] = {
    **INITIATE_RESPONSES,
    200: json_response(UploadUrls, "PUT parts to `<upload_url path>/<n>` (keeping its query)."),
    503: QUEUE_UNAVAILABLE,
}
SIGNED_COMPLETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(SignedUploadDone, "The parts, joined, are the upload."),
    401: _BAD_SIGNATURE,
    404: _NO_UPLOAD,
    413: _UPLOAD_TOO_LARGE,
    422: _NOT_STORED,
    503: QUEUE_UNAVAILABLE,
}
SIGNED_PUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(SignedUploadDone, "Stored."),
    401: _BAD_SIGNATURE,
    404: _NO_UPLOAD,
    413: _UPLOAD_TOO_LARGE,
    422: _NOT_STORED,
    503: QUEUE_UNAVAILABLE,
}
SIGNED_PART_RESPONSES: dict[int | str, dict[str, Any]] = {
    **SIGNED_PUT_RESPONSES,
    200: _part("The part is stored."),
}
TOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(UploadToken, "A token for `POST /files/upload`."),
}
FILES_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(FileUploaded, "Stored."),
    401: _BAD_TOKEN,
    413: _UPLOAD_TOO_LARGE,
    422: _NOT_STORED,
    503: QUEUE_UNAVAILABLE,
}
FILES_MULTIPART_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: json_response(MultipartStarted, "Begun."),
    401: _BAD_TOKEN,
    503: QUEUE_UNAVAILABLE,
}
FILES_COMPLETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **FILES_UPLOAD_RESPONSES,
    200: json_response(FileUploaded, "The parts, joined, are the upload."),
    404: _NO_UPLOAD,
}
FILES_PART_RESPONSES: dict[int | str, dict[str, Any]] = {
    **FILES_UPLOAD_RESPONSES,
    200: _part("The part is stored."),
    404: _NO_UPLOAD,
}
UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The upload's bytes.",
        "content": {f"image/{kind}": BINARY for kind in ("png", "jpeg", "webp", "gif")},
        "headers": {
            "Cache-Control": header("`private, max-age=3600`", required=True),
            "X-Content-Type-Options": header("`nosniff`", required=True),
        },
    },
    404: _NO_UPLOAD,
    503: QUEUE_UNAVAILABLE,
}
