"""Output images: ``GET /files/<job id>/<random name>`` (unguessable; gone when the job expires)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from core.errors import NotFound
from service.openapi import FILE_RESPONSES
from service.submission import require_key, visible_view

router = APIRouter(tags=["files"], dependencies=[Depends(require_key)])


@router.get(
    "/files/{owner}/{name}",
    operation_id="file",
    summary="An output image",
    response_class=Response,
    responses=FILE_RESPONSES,
)
async def get_file(request: Request, owner: str, name: str) -> Response:
    if await visible_view(request, owner) is None:  # the folder is the job id: its key decides
        raise NotFound(f"File {owner}/{name} not found")
    artifact = await request.app.state.flux2.jobs.open_file(f"{owner}/{name}")  # NotFound: 404
    return Response(
        artifact.data,
        media_type=artifact.content_type,
        headers={"Cache-Control": "private, max-age=3600"},
    )
