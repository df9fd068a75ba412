"""Downloaded LoRA files on disk, by content hash, bounded in bytes (least recently used first).

A file lives at ``<root>/<sha256>.safetensors``; the URL it came from maps to its hash (in
memory: after a restart a URL is downloaded once more, and lands on the same file). Using a file
refreshes its place in the LRU order (and its mtime, so the order survives a restart). Adding a
file evicts the least recently used others until the cache fits its bound again, except files
used within ``pin_seconds``: a job prepared a moment ago may still be waiting for the GPU, and its
file must still be there when the engine loads it (the cache may overshoot its bound meanwhile).

Thread-safe: the worker's prepare threads share one cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".safetensors"
#: Files used this recently are never evicted (seconds).
PIN_SECONDS = 600.0


@dataclass(frozen=True)
class FileCacheStats:
    """Counters for metrics: lookups that found the file, downloads, and what is kept."""

    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int


class LoraFileCache:
    """See the module docstring."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        pin_seconds: float = PIN_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.pin_seconds = pin_seconds
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # sha256 -> bytes, oldest first
        self._used: dict[str, float] = {}  # sha256 -> last use
        self._urls: dict[str, str] = {}  # source -> sha256
        root.mkdir(parents=True, exist_ok=True)
        found = []
        for path in root.glob(f"*{SUFFIX}"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                found.append((stat.st_mtime, path.name.removesuffix(SUFFIX), stat.st_size))
        for mtime, digest, size in sorted(found):
            self._sizes[digest] = size
            self._used[digest] = mtime

    def path_of(self, digest: str) -> Path:
        return self.root / f"{digest}{SUFFIX}"

    def lookup(self, source: str) -> tuple[str, Path] | None:
        """The cached file ``source`` was downloaded to, as ``(sha256, path)``; None (a miss)
        when it was not, or the file is gone."""
        with self._lock:
            digest = self._urls.get(source)
            if digest is not None and digest in self._sizes and self.path_of(digest).is_file():
                self.hits += 1
                self._touch(digest)
                return digest, self.path_of(digest)
            self.misses += 1
            return None

    def store(self, source: str, fill: Callable[[Callable[[bytes], object]], object]) -> Path:
        """Download ``source`` with ``fill(write)`` into the cache; the file's path (named by
        its sha256). ``fill`` raising leaves nothing behind."""
        digest_of = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".part-")
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:

                def write(chunk: bytes) -> None:
                    digest_of.update(chunk)
                    out.write(chunk)

                fill(write)
            return self.adopt(source, temp, digest_of.hexdigest())
        finally:
            temp.unlink(missing_ok=True)

    def adopt(self, source: str, temp: Path, digest: str) -> Path:
        """Move the downloaded ``temp`` (whose sha256 is ``digest``) into the cache."""
        target = self.path_of(digest)
        with self._lock:
            if not target.is_file():
                os.replace(temp, target)
            self._sizes[digest] = target.stat().st_size
            self._urls[source] = digest
            self._touch(digest)
            self._evict(keep=digest)
        return target

    def forget(self, source: str) -> None:
        """Drop what ``source`` maps to (a file that turned out unusable is not served again)."""
        with self._lock:
            digest = self._urls.pop(source, None)
            if digest is not None and digest not in self._urls.values():
                self._remove(digest)

    def stats(self) -> FileCacheStats:
        with self._lock:
            return FileCacheStats(
                hits=self.hits,
                misses=self.misses,
                entries=len(self._sizes),
                bytes=sum(self._sizes.values()),
                max_bytes=self.max_bytes,
            )

    # -- internals (under the lock) ------------------------------------------------------------

    def _touch(self, digest: str) -> None:
        now = self.clock()
        self._sizes.move_to_end(digest)
        self._used[digest] = now
        with contextlib.suppress(OSError):
            os.utime(self.path_of(digest), (now, now))

    def _evict(self, *, keep: str) -> None:
        total = sum(self._sizes.values())
        now = self.clock()
        for digest in list(self._sizes):
            if total <= self.max_bytes:
                return
            if digest == keep or now - self._used.get(digest, 0.0) < self.pin_seconds:
                continue
            total -= self._sizes[digest]
            self._remove(digest)

    def _remove(self, digest: str) -> None:
        self._sizes.pop(digest, None)
        self._used.pop(digest, None)
        for source in [s for s, d in self._urls.items() if d == digest]:
            del self._urls[source]
        self.path_of(digest).unlink(missing_ok=True)
