"""fal's proxy contract: route a request by its ``x-fal-target-url`` header.

The JS client with ``proxyUrl: {url, when: "always"}`` sends every call, method and body intact,
to the proxy URL with the real target in ``x-fal-target-url`` (e.g.
``https://queue.fal.run/fal-ai/flux-2/requests/<id>/status?logs=1``). This middleware rewrites
the ASGI path and query to that target's, so the ordinary routes answer: ``queue.*`` hosts map
under ``/queue``, any other host to the root.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = b"x-fal-target-url"


class FalProxyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = next((v for k, v in scope["headers"] if k.lower() == HEADER), None)
            if target:
                scope = dict(scope)
                url = urlsplit(target.decode("latin-1"))
                path = url.path or "/"
                if (url.hostname or "").startswith("queue.") and not path.startswith("/queue/"):
                    path = "/queue" + path
                scope["path"] = path
                scope["raw_path"] = path.encode()
                scope["query_string"] = url.query.encode()
        await self.app(scope, receive, send)
