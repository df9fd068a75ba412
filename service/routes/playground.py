"""``GET /``: the web playground, a single page that drives the server's own queue API.

The page (``service/static/``: plain HTML, CSS and JavaScript, no build step and nothing from a
CDN) reads the input schema from ``/openapi.json``, submits through
``POST /queue/fal-ai/flux-2/flash/edit``, follows ``…/status/stream?logs=1`` and shows the
result. It needs no key to load; the API calls it makes carry the key the user types in.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

router = APIRouter(tags=["playground"])

# The assets, by the name they are served under, with their media types. Only these are served:
# no directory listing and no path from the URL ever reaches the file system.
ASSETS: dict[str, str] = {
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}

# The page only talks to its own origin: no inline script, nothing from elsewhere.
# img-src allows data: and blob: (previews, sync_mode outputs, images fetched with the key) and
# http(s) because image URLs the user types are previewed as they are.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob: http: https:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'self'; form-action 'none'"
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


STATIC_DIR = Path(__file__).resolve().parent.parent / "static"  # package data of ``service``


def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(_read("index.html"), headers=HEADERS)


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404)  # answered like any unknown path
    return Response(_read(name), media_type=media_type, headers=HEADERS)
