"""The adapter LRU on the tiny FLUX.2 pipeline: loads, hits, evictions by bytes, exact switching,
and a bad file that leaves nothing behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.errors import InvalidRequest
from pipelines.adapters import AdapterCache, linear_shapes, read_lora
from pipelines.types import LoraWeights
from weights.loras import build_lora

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    pipe: Any
    shapes: dict[str, tuple[int, int]]
    loras: dict[str, LoraWeights]
    embeds: torch.Tensor
    plain: np.ndarray


def image(setup: Setup) -> np.ndarray:
    out = setup.pipe(
        prompt_embeds=setup.embeds,
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    )
    return np.asarray(out.images[0])


@pytest.fixture(scope="module")
def setup(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    from diffusers import Flux2Pipeline

    folder = tmp_path_factory.mktemp("loras")
    pipe = Flux2Pipeline.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    embeds, _ = pipe.encode_prompt(prompt="a red bicycle", device="cpu")
    loras = {
        name: LoraWeights(
            name=f"{name}" * 8,
            path=build_lora(tiny_checkpoint, folder / f"{name}.safetensors", seed=seed),
            scale=1.0,
        )
        for seed, name in enumerate(("aa", "bb", "cc"))
    }
    shapes = linear_shapes(pipe.transformer)
    setup = Setup(pipe, shapes, loras, embeds, np.empty(0))
    setup.plain = image(setup)
    return setup


def cache_for(setup: Setup, adapters: int) -> AdapterCache:
    one = read_lora(setup.loras["aa"].path, setup.shapes).nbytes(torch.float32)
    return AdapterCache(setup.pipe, adapters * one, torch.float32, setup.shapes)


def test_switching_is_exact_and_the_lru_is_bounded_in_bytes(setup: Setup) -> None:
    aa, bb, cc = (setup.loras[k] for k in ("aa", "bb", "cc"))
    cache = cache_for(setup, adapters=2)
    cache.activate((), [aa])
    with_aa = image(setup)
    assert not np.array_equal(with_aa, setup.plain)  # the LoRA does something
    cache.activate((), [aa, bb])
    both = image(setup)
    cache.activate((), [])  # no adapters: the plain model, bit for bit
    assert np.array_equal(image(setup), setup.plain)
    cache.activate((), [aa])
    assert np.array_equal(image(setup), with_aa)  # back again, exactly
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.entries) == (2, 2, 2)
    assert stats.bytes <= stats.max_bytes

    cache.activate((), [cc])  # a third adapter evicts the least recently used one (bb)
    listed = set(setup.pipe.get_list_adapters()["transformer"])
    assert listed == {aa.name, cc.name}
    assert cache.stats.entries == 2
    cache.activate((), [aa, bb])  # bb loads again (a miss); cc goes, aa stays
    assert set(setup.pipe.get_list_adapters()["transformer"]) == {aa.name, bb.name}
    assert np.array_equal(image(setup), both)
    assert (cache.stats.hits, cache.stats.misses) == (3, 4)
    cache.activate((), [])
    cache.max_bytes = 0
    cache.trim()
    assert setup.pipe.get_list_adapters().get("transformer", []) == []


def test_a_bad_lora_fails_alone_and_leaves_nothing_loaded(setup: Setup, tmp_path: Path) -> None:
    cache = cache_for(setup, adapters=3)
    bad = tmp_path / "not-a-lora.safetensors"
    bad.write_bytes(b"\x00" * 64)
    wrong = LoraWeights(name="ff" * 32, path=bad)
    with pytest.raises(InvalidRequest, match="not a safetensors file"):
        cache.check(wrong)
    with pytest.raises(InvalidRequest):
        cache.activate((), [setup.loras["aa"], wrong])
    assert wrong.name not in setup.pipe.get_list_adapters().get("transformer", [])
    cache.activate((), [setup.loras["aa"]])  # the engine goes on
    cache.activate((), [])
    assert np.array_equal(image(setup), setup.plain)


def test_check_reads_a_file_once_per_name(setup: Setup, tmp_path: Path) -> None:
    cache = cache_for(setup, adapters=1)
    path = tmp_path / "copy.safetensors"
    path.write_bytes(setup.loras["aa"].path.read_bytes())
    lora = LoraWeights(name="ab" * 32, path=path)
    cache.check(lora)
    path.unlink()
    cache.check(lora)  # the same name (the same bytes) passed before: not read again
    with pytest.raises(InvalidRequest):
        cache.check(LoraWeights(name="cd" * 32, path=path))
