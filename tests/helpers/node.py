"""Node.js and the pinned ``@fal-ai/client`` for the JS client tests (tests/clients/js)."""

from __future__ import annotations

import json
from pathlib import Path

JS_DIR = Path(__file__).resolve().parents[1] / "clients" / "js"
MIN_NODE_MAJOR = 20
NPM_TIMEOUT_S = 300


def pinned_client_version() -> str:
    return str(json.loads((JS_DIR / "package.json").read_text())["dependencies"]["@fal-ai/client"])


def installed_client_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def text_of(output: str | bytes | None) -> str:
    """What a timed-out subprocess printed (``TimeoutExpired`` may hold bytes even in text mode)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
