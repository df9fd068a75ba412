"""The engine's prompt cache on the real tiny pipeline: same pixels, fewer encoder passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.flux2 import Flux2Engine, Flux2EngineConfig
from pipelines.schedules import parse_schedule
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest

pytestmark = pytest.mark.slow


def edit(prompt: str, seed: int) -> EditRequest:
    ref = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (96, 96, 3), np.uint8))
    return EditRequest(f"r{seed}", prompt, (ref,), ImageSize(64, 64), seed=seed)


def engine(checkpoint: Path, cache_bytes: int) -> Flux2Engine:
    config = Flux2EngineConfig(
        model_path=checkpoint,
        schedule=parse_schedule("1.0,0.5"),
        reference_pixels=96 * 96,
        prompt_cache_bytes=cache_bytes,
    )
    loaded = Flux2Engine(config)
    loaded.load()
    return loaded


def test_cached_embeddings_give_identical_pixels(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached, uncached = engine(tiny_checkpoint, 64 * 2**20), engine(tiny_checkpoint, 0)
    encodes: list[str] = []
    original = cached.pipe.encode_prompt

    def counting(*args: object, **kwargs: object) -> object:
        encodes.append(str(kwargs.get("prompt")))
        return original(*args, **kwargs)

    monkeypatch.setattr(cached.pipe, "encode_prompt", counting)
    first = cached.run([edit("make the car #FF5733", 1)])[0]
    second = cached.run([edit("make the car #FF5733", 2), edit("make the car #FF5733", 3)])
    reference = uncached.run([edit("make the car #FF5733", 2)])[0]

    assert encodes == ["make the car #FF5733"]  # encoded once, then served from the cache
    assert cached.prompt_cache.stats.hits == 1
    assert first.images[0].size == (64, 64)
    ours = np.asarray(second[0].images[0])
    theirs = np.asarray(reference.images[0])
    assert np.array_equal(ours, theirs)
    assert uncached.prompt_cache.stats.entries == 0


def test_different_prompts_miss(tiny_checkpoint: Path) -> None:
    cached = engine(tiny_checkpoint, 64 * 2**20)
    cached.run([edit("one", 1)])
    cached.run([edit("two", 1)])
    assert (cached.prompt_cache.stats.hits, cached.prompt_cache.stats.misses) == (0, 2)
