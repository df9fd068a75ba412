"""fal's paths on this server, and parsing its server-sent events."""

from __future__ import annotations

import json
from typing import Any

from service.schema import APP_ID, ENDPOINT_ID

RUN_PATH = f"/{ENDPOINT_ID}"  # sync run
SUBMIT_PATH = f"/queue/{ENDPOINT_ID}"  # queue submit


def request_path(request_id: str, suffix: str = "", *, subpath: bool = False) -> str:
    """``/queue/fal-ai/flux-2/requests/<id><suffix>`` (or the ``flash/edit`` sub-path form)."""
    prefix = ENDPOINT_ID if subpath else APP_ID
    return f"/queue/{prefix}/requests/{request_id}{suffix}"


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The JSON of every ``data:`` event in a ``text/event-stream`` body."""
    events = []
    for block in text.split("\n\n"):
        data = [
            line[len("data:") :].strip() for line in block.splitlines() if line.startswith("data:")
        ]
        if data:
            events.append(json.loads("\n".join(data)))
    return events
