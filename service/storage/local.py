"""Files on local disk: the single-machine default.

Output images are deleted with their job. A store made with a ``ttl`` (uploads) forgets files
by age instead: ``open`` refuses a file older than ``ttl`` seconds, and ``put`` sweeps expired
folders (at most once every ``ttl / 10`` seconds, and at least once a minute).
"""

from __future__ import annotations

import mimetypes
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from core.errors import NotFound, StorageError
from service.storage.base import Artifact

_CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


class LocalArtifactStore:
    """Implements :class:`service.storage.base.ArtifactStore` under a root directory."""

    def __init__(self, root: Path, *, ttl: float | None = None) -> None:
        self.root = Path(root)
        self.ttl = ttl
        self._swept_at = time.monotonic()
        self._sweep_lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the file store at {self.root}: {exc}") from exc

    def put(self, owner: str, name: str, data: bytes, content_type: str) -> str:
        folder = self._path(owner)
        target = folder / checked_segment(name)
        try:
            folder.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot store {owner}/{name}: {exc}") from exc
        self._sweep()
        return f"{owner}/{name}"

    def open(self, key: str) -> Artifact:
        owner, _, name = key.partition("/")
        path = self._path(owner) / checked_segment(name, missing=True)
        try:
            if self.ttl is not None and self._expired(path.stat().st_mtime):
                raise FileNotFoundError(path)
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"File {key} not found") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc
        suffix = name.rpartition(".")[2].lower()
        content_type = _CONTENT_TYPES.get(suffix) or (
            mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        return Artifact(data=data, content_type=content_type)

    def delete(self, owner: str) -> None:
        shutil.rmtree(self._path(owner), ignore_errors=True)

    def _path(self, owner: str) -> Path:
        return self.root / checked_segment(owner, missing=True)

    def _expired(self, mtime: float) -> bool:
        return self.ttl is not None and time.time() - mtime > self.ttl

    def _sweep(self) -> None:
        """Delete the folders whose newest file expired (stores with a ``ttl`` only)."""
        if self.ttl is None:
            return
        now = time.monotonic()
        if now - self._swept_at < min(60.0, self.ttl / 10) or not self._sweep_lock.acquire(False):
            return
        try:
            self._swept_at = now
            for folder in self.root.iterdir():
                try:
                    newest = max((f.stat().st_mtime for f in folder.iterdir()), default=0.0)
                except OSError:
                    continue
                if self._expired(newest):
                    shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # the root vanished or is unreadable: the next put tries again
        finally:
            self._sweep_lock.release()


def checked_segment(part: str, *, missing: bool = False) -> str:
    """A single safe path segment: no slashes, no dot-dot, no hidden files."""
    if not _SAFE.match(part) or part.startswith("."):
        if missing:
            raise NotFound("File not found")
        raise StorageError(f"unsafe file name {part!r}")
    return part
