"""The prompt-embedding LRU: bounded in bytes, least recently used evicted first, counted."""

from __future__ import annotations

import torch

from pipelines.prompt_cache import PromptEmbeddingCache


def tensors(mb: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(mb * 1024 * 1024 // 4, dtype=torch.float32), torch.zeros(4)


def test_hits_and_misses_are_counted() -> None:
    cache = PromptEmbeddingCache(max_bytes=10 * 2**20)
    assert cache.get("a") is None
    cache.put("a", tensors(1))
    assert cache.get("a") is not None
    assert (cache.stats.hits, cache.stats.misses, cache.stats.entries) == (1, 1, 1)


def test_bounded_in_bytes_least_recently_used_goes_first() -> None:
    cache = PromptEmbeddingCache(max_bytes=3 * 2**20 + 1024)
    for key in "abc":
        cache.put(key, tensors(1))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", tensors(1))
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.stats.bytes <= cache.max_bytes
    assert cache.stats.entries == 3


def test_an_entry_larger_than_the_cache_is_not_stored() -> None:
    cache = PromptEmbeddingCache(max_bytes=2**20)
    cache.put("huge", tensors(2))
    assert cache.get("huge") is None
    assert cache.stats.bytes == 0


def test_replacing_a_key_keeps_the_byte_count_right() -> None:
    cache = PromptEmbeddingCache(max_bytes=10 * 2**20)
    cache.put("a", tensors(2))
    cache.put("a", tensors(1))
    assert cache.stats.entries == 1
    assert cache.stats.bytes == 2**20 + 16
