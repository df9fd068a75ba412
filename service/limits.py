"""Request body size limit, enforced while the body streams in (Content-Length or chunked)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    """Answers 413 with a fal-style body when a request body exceeds ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before reading anything. A body that
    turns out larger while streaming (chunked, or a lying Content-Length) is cut off: the 413 is
    sent from the receive side, the app is told the client went away, and whatever the app
    still tries to send is dropped.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        path = str(scope.get("path", ""))
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, path)
            return
        received = 0
        started = False
        rejected = False

        async def guarded_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    rejected = True
                    if not started:
                        await self._reject(send, path)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 413 has gone out: the app's answer has nowhere to go
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not rejected:
                raise
            # the app failed reading a body we cut off (ClientDisconnect): already answered

    async def _reject(self, send: Send, path: str = "") -> None:
        message = f"Request body is larger than {self.max_bytes} bytes"
        if path.startswith("/v1/"):  # the OpenAI routes answer in OpenAI's error shape
            error = {"message": message, "type": "invalid_request_error", "param": None,
                     "code": "request_too_large"}  # fmt: skip
            body = json.dumps({"error": error}).encode()
        else:
            body = json.dumps({"detail": message, "error_type": "request_too_large"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-fal-error-type", b"request_too_large"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
