"""API keys, as the fal clients send them: ``Authorization: Key <key>`` (or ``Bearer <key>``).

Keys are kept only as SHA-256 digests (give them hashed, ``sha256:<hex>``, or plain, hashed at
start) and compared in constant time. A caller is known by a short fingerprint of its key's
digest; jobs remember it, and only the same key sees their status, result, stream, cancel and
files (others get 404, as if the request did not exist).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from core.errors import ConfigError, Unauthorized

PREFIX = "sha256:"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its stored form."""
    key = secrets.token_urlsafe(32)
    return key, PREFIX + digest(key)


class ApiKeys:
    """The configured keys; with none, everyone is the anonymous caller (None)."""

    def __init__(self, entries: str | list[str] = "") -> None:
        items = entries.split(",") if isinstance(entries, str) else entries
        self._digests: list[bytes] = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            hexdigest = item[len(PREFIX) :] if item.startswith(PREFIX) else digest(item)
            try:
                stored = bytes.fromhex(hexdigest)
            except ValueError:
                stored = b""
            if len(stored) != hashlib.sha256().digest_size:
                raise ConfigError(f"API key entry {item[:16]}…: a sha256: digest is 64 hex digits")
            self._digests.append(stored)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, authorization: str | None) -> str | None:
        """The caller's fingerprint, None when keys are off; raises Unauthorized otherwise."""
        if not self.enabled:
            return None
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() not in ("key", "bearer") or not key.strip():
            raise Unauthorized("Missing credentials: send 'Authorization: Key <your key>'")
        presented = hashlib.sha256(key.strip().encode()).digest()
        match = False
        for stored in self._digests:  # no early exit: the time does not depend on which key
            match |= hmac.compare_digest(presented, stored)
        if not match:
            raise Unauthorized("Invalid API key")
        return presented.hex()[:16]
