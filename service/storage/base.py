"""The storage seam: where output images live until their job expires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Artifact:
    data: bytes
    content_type: str


class ArtifactStore(Protocol):
    """Bytes under keys ``<owner>/<name>``; the URL path is ``/files/<key>``.

    Owners are job ids and names carry a random token, so keys cannot be guessed. Failures raise
    ``StorageError`` (never swallowed); unknown keys raise ``NotFound``.
    """

    def put(self, owner: str, name: str, data: bytes, content_type: str) -> str:
        """Store ``data``; returns its key."""
        ...

    def open(self, key: str) -> Artifact:
        """The bytes and content type stored under ``key``."""
        ...

    def delete(self, owner: str) -> None:
        """Remove everything stored for ``owner`` (a job that expired)."""
        ...
