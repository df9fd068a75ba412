"""fal's storage protocol: how the official clients upload local files (fal-protocol.md §10).

* JS ``fal.storage.upload(blob)`` (and every Blob in an input) and Python's ``gcs`` fallback:
  ``POST /storage/upload/initiate`` → ``{upload_url, file_url}``, then ``PUT upload_url`` with the
  bytes and no key (the URL is signed); over 90 MB ``initiate-multipart``, ``PUT …/{n}`` and
  ``POST …/complete``.
* Python ``fal_client.upload_file`` / ``upload_image`` (``fal_v3``):
  ``POST /storage/auth/token`` → a token, then ``POST /files/upload`` with
  ``Authorization: Bearer <token>`` → ``{access_url}``; over 100 MB ``/files/upload/multipart``,
  ``PUT {access_url}/multipart/{id}/{n}`` and ``POST …/complete``.
* ``GET /uploads/{id}``: an upload, to the key that made it.

Starting an upload needs the API key; the upload belongs to that key. What is stored, signed and
checked is :mod:`service.uploads`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from core.errors import NotFound, Unauthorized
from service import openapi_storage as spec
from service.openapi_errors import json_body, model_schema
from service.submission import base_url, body_errors, caller, read_json_body
from service.uploads import (
    Kind,
    StoredUpload,
    Uploads,
    UploadSigner,
    UploadTooLarge,
    check_upload_id,
    file_url,
    new_upload_id,
)

router = APIRouter(tags=["storage"])


class InitiateBody(BaseModel):
    """What the clients send to start an upload (the name and type are informative only: the
    bytes are sniffed)."""

    model_config = ConfigDict(extra="ignore")
    content_type: str = Field(default="application/octet-stream", max_length=255)
    file_name: str | None = Field(default=None, max_length=1024)


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    part_number: int = Field(alias="partNumber")
    etag: str = Field(max_length=128)


class CompleteBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    parts: list[Part] = Field(max_length=10_000)


INITIATE_BODY = json_body(
    model_schema(InitiateBody), "What the file is (informative only).", required=False
)
COMPLETE_BODY = json_body(model_schema(CompleteBody), "The parts, by number and ETag.")
#: The operations that check the API key (the others check a signed URL or an upload token).
KEYED = frozenset({"upload_initiate", "upload_initiate_multipart", "upload_token", "upload"})


def _uploads(request: Request) -> Uploads:
    uploads: Uploads = request.app.state.flux2.uploads
    return uploads


def _signer(request: Request) -> UploadSigner:
    signer: UploadSigner = request.app.state.flux2.upload_signer
    return signer


def _base(request: Request) -> str:
    return base_url(request, request.app.state.flux2.settings)


async def _body(request: Request, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _parsed(request: Request, model: type[BaseModel]) -> Any:
    """The body as ``model``; no body at all is ``{}``."""
    try:
        raw = await request.body()
        return model.model_validate(await read_json_body(request) if raw.strip() else {})
    except ValidationError as exc:
        raise body_errors(exc.errors(include_url=False)) from None


def _bearer(request: Request) -> str | None:
    """The owner an ``Authorization: Bearer <upload token>`` names (Python's fal_v3 uploads)."""
    scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Missing upload token: get one from POST /storage/auth/token")
    return _signer(request).verify(token.strip(), Kind.CDN).owner


def _stored(upload: StoredUpload, url: str) -> dict[str, Any]:
    return {"content_type": upload.content_type, "file_size": upload.size, "url": url}


# -- signed upload URLs: the JS client, and Python's gcs fallback ---------------------------------


async def _initiate(request: Request, *, multipart: bool) -> JSONResponse:
    owner = caller(request)
    await _parsed(request, InitiateBody)
    upload_id = new_upload_id()
    if multipart:
        await run_in_threadpool(_uploads(request).begin_parts, upload_id, owner)
    token, _ = _signer(request).sign(Kind.PUT, owner, upload_id)
    base = _base(request)
    return JSONResponse(
        {
            "upload_url": f"{base}/storage/upload/{upload_id}?token={token}",
            "file_url": file_url(base, upload_id),
        }
    )


@router.post(
    "/storage/upload/initiate",
    operation_id="upload_initiate",
    summary="Start an upload: a signed URL to PUT the bytes to, and the file's URL",
    openapi_extra=INITIATE_BODY,
    responses=spec.INITIATE_RESPONSES,
)
async def initiate(request: Request) -> JSONResponse:
    return await _initiate(request, multipart=False)


@router.post(
    "/storage/upload/initiate-multipart",
    operation_id="upload_initiate_multipart",
    summary="Start a multipart upload (parts are PUT to <upload_url>/<n>)",
    openapi_extra=INITIATE_BODY,
    responses=spec.INITIATE_MULTIPART_RESPONSES,
)
async def initiate_multipart(request: Request) -> JSONResponse:
    return await _initiate(request, multipart=True)


def _granted(request: Request, upload_id: str) -> str | None:
    """The owner the signed URL of ``upload_id`` names (no API key: the URL is the proof)."""
    check_upload_id(upload_id)
    return _signer(request).verify(request.query_params.get("token"), Kind.PUT, upload_id).owner


@router.post(
    "/storage/upload/{upload_id}/complete",
    operation_id="upload_complete",
    summary="Finish a multipart upload (signed URL)",
    openapi_extra={**COMPLETE_BODY, "security": spec.SIGNED},
    responses=spec.SIGNED_COMPLETE_RESPONSES,
)
async def complete_signed(request: Request, upload_id: str) -> JSONResponse:
    owner = _granted(request, upload_id)
    body: CompleteBody = await _parsed(request, CompleteBody)
    parts = [(part.part_number, part.etag) for part in body.parts]
    stored = await run_in_threadpool(_uploads(request).complete, upload_id, owner, parts)
    url = file_url(_base(request), upload_id)
    return JSONResponse({"file_url": url, **_stored(stored, url)})


@router.put(
    "/storage/upload/{upload_id}",
    operation_id="upload_put",
    summary="The bytes of an upload (signed URL, no API key)",
    openapi_extra={**spec.BYTES_BODY, "security": spec.SIGNED},
    responses=spec.SIGNED_PUT_RESPONSES,
)
async def put_signed(request: Request, upload_id: str) -> JSONResponse:
    owner = _granted(request, upload_id)
    uploads = _uploads(request)
    data = await _body(request, uploads.max_bytes)
    stored = await run_in_threadpool(uploads.save, upload_id, owner, data)
    url = file_url(_base(request), upload_id)
    return JSONResponse({"file_url": url, **_stored(stored, url)})


@router.put(
    "/storage/upload/{upload_id}/{part}",
    operation_id="upload_put_part",
    summary="One part of a multipart upload (signed URL)",
    openapi_extra={**spec.BYTES_BODY, "security": spec.SIGNED},
    responses=spec.SIGNED_PART_RESPONSES,
)
async def put_signed_part(request: Request, upload_id: str, part: int) -> JSONResponse:
    owner = _granted(request, upload_id)
    uploads = _uploads(request)
    data = await _body(request, uploads.max_part_bytes)
    tag = await run_in_threadpool(uploads.save_part, upload_id, owner, part, data)
    return JSONResponse({"partNumber": part, "etag": tag}, headers={"ETag": f'"{tag}"'})


# -- upload tokens: Python's fal_v3 repository -----------------------------------------------------


@router.post(
    "/storage/auth/token",
    operation_id="upload_token",
    summary="A token for POST /files/upload (fal_client.upload_file and upload_image)",
    responses=spec.TOKEN_RESPONSES,
)
async def token(request: Request) -> JSONResponse:
    owner = caller(request)
    value, expires = _signer(request).sign(Kind.CDN, owner)
    return JSONResponse(
        {
            "token": value,
            "token_type": "Bearer",
            "base_url": _base(request),
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(),
        }
    )


@router.post(
    "/files/upload",
    operation_id="files_upload",
    summary="Upload a file in one request (Authorization: Bearer <upload token>)",
    openapi_extra={**spec.BYTES_BODY, "security": spec.TOKEN},
    responses=spec.FILES_UPLOAD_RESPONSES,
)
async def files_upload(request: Request) -> JSONResponse:
    owner = _bearer(request)
    uploads = _uploads(request)
    data = await _body(request, uploads.max_bytes)
    upload_id = new_upload_id()
    stored = await run_in_threadpool(uploads.save, upload_id, owner, data)
    url = file_url(_base(request), upload_id)
    return JSONResponse({"access_url": url, **_stored(stored, url)})


@router.post(
    "/files/upload/multipart",
    operation_id="files_upload_multipart",
    summary="Start a multipart upload (Authorization: Bearer <upload token>)",
    openapi_extra={"security": spec.TOKEN},
    responses=spec.FILES_MULTIPART_RESPONSES,
)
async def files_upload_multipart(request: Request) -> JSONResponse:
    owner = _bearer(request)
    upload_id = new_upload_id()
    await run_in_threadpool(_uploads(request).begin_parts, upload_id, owner)
    return JSONResponse({"access_url": file_url(_base(request), upload_id), "uploadId": upload_id})


def _same_upload(upload_id: str, multipart_id: str) -> None:
    """The multipart id of fal_v3's part URLs is the upload's own id here."""
    check_upload_id(upload_id)
    if multipart_id != upload_id:
        raise NotFound(f"Multipart upload {multipart_id[:40]} not found")


@router.post(
    "/uploads/{upload_id}/multipart/{multipart_id}/complete",
    operation_id="files_upload_complete",
    summary="Finish a multipart upload (Authorization: Bearer <upload token>)",
    openapi_extra={**COMPLETE_BODY, "security": spec.TOKEN},
    responses=spec.FILES_COMPLETE_RESPONSES,
)
async def files_upload_complete(
    request: Request, upload_id: str, multipart_id: str
) -> JSONResponse:
    owner = _bearer(request)
    _same_upload(upload_id, multipart_id)
    body: CompleteBody = await _parsed(request, CompleteBody)
    parts = [(part.part_number, part.etag) for part in body.parts]
    stored = await run_in_threadpool(_uploads(request).complete, upload_id, owner, parts)
    url = file_url(_base(request), upload_id)
    return JSONResponse({"access_url": url, **_stored(stored, url)})


@router.put(
    "/uploads/{upload_id}/multipart/{multipart_id}/{part}",
    operation_id="files_upload_part",
    summary="One part of a multipart upload (Authorization: Bearer <upload token>)",
    openapi_extra={**spec.BYTES_BODY, "security": spec.TOKEN},
    responses=spec.FILES_PART_RESPONSES,
)
async def files_upload_part(
    request: Request, upload_id: str, multipart_id: str, part: int
) -> JSONResponse:
    owner = _bearer(request)
    _same_upload(upload_id, multipart_id)
    uploads = _uploads(request)
    data = await _body(request, uploads.max_part_bytes)
    tag = await run_in_threadpool(uploads.save_part, upload_id, owner, part, data)
    return JSONResponse({"partNumber": part, "etag": tag}, headers={"ETag": f'"{tag}"'})


# -- reading an upload back ----------------------------------------------------------------------


@router.get(
    "/uploads/{upload_id}",
    operation_id="upload",
    summary="An upload (its key only)",
    response_class=Response,
    responses=spec.UPLOAD_RESPONSES,
)
async def get_upload(request: Request, upload_id: str) -> Response:
    owner = caller(request)
    artifact = await run_in_threadpool(_uploads(request).read, upload_id, owner)  # 404 if not
    return Response(
        artifact.data,
        media_type=artifact.content_type,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
