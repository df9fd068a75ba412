"""Output images: ``GET /files/<job id>/<random name>`` (unguessable; gone when the job expires)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter(tags=["files"])


@router.get("/files/{owner}/{name}", operation_id="file", summary="An output image")
async def get_file(request: Request, owner: str, name: str) -> Response:
    artifact = request.app.state.flux2.store.open(f"{owner}/{name}")  # NotFound → 404
    return Response(
        artifact.data,
        media_type=artifact.content_type,
        headers={"Cache-Control": "private, max-age=3600"},
    )
