"""An LRU of prompt embeddings, bounded in bytes: repeated prompts skip the text encoder.

FLUX.2 [dev] encodes every prompt with a 24B Mistral model (512 tokens, one pass); the result is
``[1, 512, 15360]`` (about 15.7 MB in bf16). Reusing it is exact: the same tensors give the same
image bit for bit. The key must hold everything that changes the embedding: the prompt text,
the sequence length, the hidden-state layers read, and the encoder's identity, dtype and device.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int


class PromptEmbeddingCache:
    """Thread-safe LRU keyed by hashables, holding tuples of tensors, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[tuple[Any, ...], int]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[Any, ...] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def put(self, key: Hashable, tensors: tuple[Any, ...]) -> None:
        size = sum(int(t.numel()) * int(t.element_size()) for t in tensors)
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (tensors, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits, self._misses, len(self._entries), self._bytes, self.max_bytes
            )
