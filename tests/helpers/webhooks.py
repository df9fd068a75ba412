"""A webhook receiver: a real ``http.server`` on loopback recording every POST.

Webhooks go to public addresses only unless allowed: senders in tests use
``webhook_policy("127.0.0.1")`` (or ``FLUX2_WEBHOOK_ALLOW=127.0.0.1``) to reach it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """What the receiver got; it answers with ``codes`` in turn, then 200."""

    url: str
    codes: list[int] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.bodies)


@contextmanager
def webhook_server(codes: list[int] | None = None) -> Iterator[Receiver]:
    """A receiver on ``127.0.0.1`` in a thread, for the length of the block."""
    receiver = Receiver(url="", codes=list(codes or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            with receiver.lock:
                receiver.bodies.append(json.loads(raw))
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                code = receiver.codes.pop(0) if receiver.codes else 200
            self.send_response(code)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
