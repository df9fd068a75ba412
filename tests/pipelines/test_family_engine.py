"""The engine's FLUX.2 family on the tiny checkpoint (CPU, float32): text-to-image, the turbo and
base regimes on one set of weights, per-request LoRAs and ``acceleration``.

Parity is pixel for pixel with a direct ``Flux2Pipeline`` call holding the same adapters at the
same scales (diffusers' own ``load_lora_weights`` / ``set_adapters``). The checkpoint is a copy
of the session's tiny one with a random stand-in Turbo LoRA where ``weights download`` puts the
real one, so the engine finds it by itself.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import Flux2Pipeline
from PIL import Image

from core.errors import InvalidRequest, WeightsError
from pipelines.flux2 import Flux2Engine, Flux2EngineConfig
from pipelines.regimes import TURBO_ADAPTER, TurboMode
from pipelines.schedules import TURBO_SIGMAS
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest, LoraWeights, StepEvent
from weights.loras import ATTENTION_LINEARS, build_lora, build_tiny_turbo_lora

pytestmark = pytest.mark.slow

REF_PIXELS = 128 * 128
SIZE = ImageSize(64, 64)
BOTH = frozenset({"turbo", "base"})


@dataclasses.dataclass(frozen=True)
class Family:
    model: Path
    turbo: Path
    style: LoraWeights
    detail: LoraWeights


@pytest.fixture(scope="module")
def family(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Family:
    root = tmp_path_factory.mktemp("family")
    model = root / "FLUX.2-dev"
    shutil.copytree(tiny_checkpoint, model)
    turbo = build_tiny_turbo_lora(model)
    style = build_lora(model, root / "style.safetensors", seed=21, strength=0.6)
    detail = build_lora(model, root / "detail", seed=22, targets=ATTENTION_LINEARS)
    return Family(
        model,
        turbo,
        LoraWeights(name="a1" * 32, path=style, scale=0.7),
        LoraWeights(name="b2" * 32, path=detail, scale=1.3),
    )


@pytest.fixture(scope="module")
def engine(family: Family) -> Flux2Engine:
    engine = Flux2Engine(
        Flux2EngineConfig(model_path=family.model, reference_pixels=REF_PIXELS, regimes=BOTH)
    )
    engine.load()
    return engine


@pytest.fixture(scope="module")
def direct(family: Family) -> Flux2Pipeline:
    """The plain diffusers pipeline with the same adapters, loaded diffusers' own way."""
    pipe = Flux2Pipeline.from_pretrained(family.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():  # PEFT warns about every adapter after the first
        warnings.simplefilter("ignore", UserWarning)
        pipe.load_lora_weights(str(family.turbo), adapter_name=TURBO_ADAPTER)
        pipe.load_lora_weights(
            str(family.style.path.parent),
            weight_name=family.style.path.name,
            adapter_name=family.style.name,
        )
        pipe.load_lora_weights(  # no .safetensors suffix: hand diffusers the tensors
            _tensors(family.detail.path), adapter_name=family.detail.name
        )
    return pipe


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def reference(seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))


def request(request_id: str = "r", **fields: object) -> EditRequest:
    values: dict[str, object] = {
        "request_id": request_id,
        "prompt": "a lighthouse in a storm",
        "images": (),
        "size": SIZE,
        "seed": 5,
    }
    values.update(fields)
    return EditRequest(**values)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def generators(seed: int, count: int = 1) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed + k) for k in range(count)]


def use(pipe: Flux2Pipeline, adapters: dict[str, float]) -> None:
    if adapters:
        pipe.enable_lora()
        pipe.set_adapters(list(adapters), list(adapters.values()))
    else:
        pipe.disable_lora()


def test_the_turbo_lora_beside_the_model_is_kept_as_an_adapter(engine: Flux2Engine) -> None:
    assert engine.turbo_mode is TurboMode.ADAPTER


def test_text_to_image_parity_turbo(engine: Flux2Engine, direct: Flux2Pipeline) -> None:
    (result,) = engine.run([request(num_images=2, seed=3)])
    use(direct, {TURBO_ADAPTER: 1.0})
    theirs = direct(
        prompt="a lighthouse in a storm",
        height=64,
        width=64,
        num_inference_steps=8,
        sigmas=list(TURBO_SIGMAS),
        guidance_scale=2.5,
        num_images_per_prompt=2,
        generator=generators(3, 2),
    ).images
    assert [max_diff(a, b) for a, b in zip(result.images, theirs, strict=True)] == [0, 0]


def test_base_edit_parity_with_12_steps(engine: Flux2Engine, direct: Flux2Pipeline) -> None:
    edit = request(images=(reference(),), regime="base", steps=12, guidance_scale=4.0, seed=9)
    (result,) = engine.run([edit])
    (size,) = edit.reference_sizes(REF_PIXELS)
    use(direct, {})
    (theirs,) = direct(
        image=[Flux2Engine.resize_reference(reference(), size)],
        prompt=edit.prompt,
        height=64,
        width=64,
        num_inference_steps=12,
        guidance_scale=4.0,
        generator=generators(9),
    ).images
    assert max_diff(result.images[0], theirs) == 0


def test_lora_edit_parity_with_two_adapters(
    engine: Flux2Engine, direct: Flux2Pipeline, family: Family
) -> None:
    loras = (family.style, family.detail)
    edit = request(images=(reference(2),), regime="base", steps=6, loras=loras, seed=4)
    plain = dataclasses.replace(edit, loras=())
    with_loras, without = engine.run([edit, plain])
    (size,) = edit.reference_sizes(REF_PIXELS)
    use(direct, {family.style.name: 0.7, family.detail.name: 1.3})
    (theirs,) = direct(
        image=[Flux2Engine.resize_reference(reference(2), size)],
        prompt=edit.prompt,
        height=64,
        width=64,
        num_inference_steps=6,
        guidance_scale=2.5,
        generator=generators(4),
    ).images
    assert max_diff(with_loras.images[0], theirs) == 0
    assert max_diff(with_loras.images[0], without.images[0]) > 0  # the adapters did something
    stats = engine.adapter_cache_stats()
    assert stats is not None and stats.entries >= 2 and stats.misses >= 2


def test_regimes_and_adapter_sets_never_share_a_batch(engine: Flux2Engine, family: Family) -> None:
    batch = [
        request("turbo"),
        request("base", regime="base", steps=4),
        request("lora", regime="base", steps=4, loras=(family.style,)),
        request("other-scale", regime="base", steps=4,
                loras=(dataclasses.replace(family.style, scale=0.2),)),
    ]  # fmt: skip
    seen: list[tuple[str, ...]] = []
    together = engine.run(batch, on_step=lambda event: seen.append(event.request_ids))
    assert set(seen) == {(r.request_id,) for r in batch}  # four sub-batches of one
    for alone, mixed in zip(batch, together, strict=True):
        (solo,) = engine.run([alone])
        assert max_diff(solo.images[0], mixed.images[0]) == 0, alone.request_id
    images = [r.images[0] for r in together]
    assert all(max_diff(a, b) > 0 for i, a in enumerate(images) for b in images[i + 1 :])
    hits_before = engine.adapter_cache_stats().hits  # type: ignore[union-attr]
    engine.run([batch[2]])
    assert engine.adapter_cache_stats().hits == hits_before + 1  # type: ignore[union-attr]


def test_text_to_image_cancellation_and_previews(engine: Flux2Engine) -> None:
    events: list[StepEvent] = []

    def cancel(request_id: str) -> bool:
        return request_id == "gone" and len(events) >= 2

    keep, gone = engine.run(
        [request("keep", previews=1, seed=1), request("gone", seed=2)],
        on_step=events.append,
        should_cancel=cancel,
    )
    assert gone.cancelled and not gone.images
    assert not keep.cancelled and len(keep.images) == 1
    assert events[-1].request_ids == ("keep",)
    assert [p.step for e in events for p in e.previews] == [4]
    (alone,) = engine.run([request("keep", seed=1)])
    assert max_diff(alone.images[0], keep.images[0]) <= 1  # another batch shape: kernel noise


def test_acceleration_levels(engine: Flux2Engine) -> None:
    def run(level: str, request_id: str = "acc", seed: int = 6) -> Image.Image:
        (result,) = engine.run(
            [request(request_id, regime="base", steps=12, acceleration=level, seed=seed)]
        )
        return result.images[0]

    none = run("none")
    assert max_diff(run("regular"), none) == 0  # no fast paths configured: the same model
    high = run("high")
    diff = np.abs(pixels(high) - pixels(none))
    assert 0 < diff.mean() < 16  # step caching approximates the exact computation
    assert max_diff(run("none"), none) == 0  # the hooks are gone after a cached batch

    events: list[StepEvent] = []
    cached = [
        request("a", regime="base", steps=12, acceleration="high", seed=6),
        request("b", regime="base", steps=12, acceleration="high", seed=7),
    ]
    kept, dropped = engine.run(
        cached,
        on_step=events.append,
        should_cancel=lambda rid: rid == "b" and len(events) >= 3,
    )
    assert dropped.cancelled and max_diff(kept.images[0], high) <= 1


def test_bad_loras_are_refused_and_the_engine_goes_on(
    engine: Flux2Engine, family: Family, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    bad = LoraWeights(name="0f" * 32, path=junk)
    with pytest.raises(InvalidRequest):
        engine.check_lora(bad)
    with pytest.raises(InvalidRequest):
        engine.run([request(regime="base", steps=2, loras=(bad,))])
    engine.check_lora(family.style)
    (result,) = engine.run([request(regime="base", steps=2, loras=(family.style,))])
    assert result.images


def test_a_regime_the_server_does_not_serve_is_refused(family: Family) -> None:
    engine = Flux2Engine(Flux2EngineConfig(model_path=family.model, regimes=frozenset({"turbo"})))
    engine.load()
    assert engine.turbo_mode is TurboMode.FUSED  # turbo alone: fused, as before
    with pytest.raises(InvalidRequest, match="base regime"):
        engine.run([request(regime="base")])
    (result,) = engine.run([request()])
    assert result.images


def test_real_weights_without_the_turbo_lora_refuse_to_load(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    model = tmp_path / "FLUX.2-dev"
    shutil.copytree(tiny_checkpoint, model)
    config = model / "transformer" / "config.json"
    config.write_text(
        config.read_text().replace('"num_single_layers": 2', '"num_single_layers": 48')
    )
    engine = Flux2Engine(Flux2EngineConfig(model_path=model, regimes=BOTH))
    with pytest.raises(WeightsError, match="flux2-edit weights download"):
        engine.load()
