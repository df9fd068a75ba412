"""The FLUX.2 engine on the real tiny Flux2Pipeline (CPU, float32)."""

from __future__ import annotations

import dataclasses
import math
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import Flux2Pipeline
from PIL import Image

from core.errors import WeightsError
from pipelines.flux2 import Flux2Engine, Flux2EngineConfig, warmup_shapes
from pipelines.schedules import TURBO_SIGMAS, parse_schedule
from pipelines.sizes import PRESETS, ImageSize
from pipelines.types import EditRequest, StepEvent

pytestmark = pytest.mark.slow

REF_PIXELS = 128 * 128
TWO_STEPS = parse_schedule("1.0,0.5")
SMALL = ImageSize(128, 128)


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def request(
    request_id: str = "r1",
    *,
    prompt: str = "make the car #FF0000",
    images: tuple[Image.Image, ...] | None = None,
    size: ImageSize = SMALL,
    seed: int = 7,
    num_images: int = 1,
    guidance: float = 2.5,
    expand: bool = False,
) -> EditRequest:
    return EditRequest(
        request_id=request_id,
        prompt=prompt,
        images=images if images is not None else (noise_image(128, 96, 1),),
        size=size,
        seed=seed,
        num_images=num_images,
        guidance_scale=guidance,
        enable_prompt_expansion=expand,
    )


def make_engine(checkpoint: Path, **overrides: object) -> Flux2Engine:
    config = Flux2EngineConfig(model_path=checkpoint, reference_pixels=REF_PIXELS)
    engine = Flux2Engine(dataclasses.replace(config, **overrides))  # type: ignore[arg-type]
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engine(tiny_checkpoint: Path) -> Flux2Engine:
    return make_engine(tiny_checkpoint)


@pytest.fixture(scope="module")
def fast_engine(tiny_checkpoint: Path) -> Flux2Engine:
    return make_engine(tiny_checkpoint, schedule=TWO_STEPS)


@pytest.fixture(scope="module")
def direct_pipe(tiny_checkpoint: Path) -> Flux2Pipeline:
    pipe = Flux2Pipeline.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pixel_parity_with_a_direct_pipeline_call(
    engine: Flux2Engine, direct_pipe: Flux2Pipeline
) -> None:
    refs = (noise_image(128, 96, 1), noise_image(80, 120, 2))
    edit = request(images=refs, num_images=2, seed=11)
    (result,) = engine.run([edit])

    sizes = edit.reference_sizes(REF_PIXELS)
    direct = direct_pipe(
        image=[Flux2Engine.resize_reference(im, s) for im, s in zip(refs, sizes, strict=True)],
        prompt=edit.prompt,
        height=128,
        width=128,
        num_inference_steps=8,
        sigmas=list(TURBO_SIGMAS),
        guidance_scale=2.5,
        num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(11), torch.Generator("cpu").manual_seed(12)],
    ).images
    assert len(result.images) == 2
    for ours, theirs in zip(result.images, direct, strict=True):
        assert ours.size == theirs.size == (128, 128)
        assert max_diff(ours, theirs) == 0
    # The two images of one request really are different draws.
    assert max_diff(result.images[0], result.images[1]) > 0


def test_references_prepared_by_the_worker_give_the_same_pixels(
    fast_engine: Flux2Engine,
) -> None:
    """The worker resizes references on its prepare threads; the image must not change."""
    refs = (noise_image(200, 577, 3).convert("RGBA"), noise_image(128, 96, 4))
    edit = request(images=refs, seed=5)
    prepared = edit.with_prepared_references(fast_engine.config.reference_pixels)
    assert prepared.prepared_for is not None
    assert [im.size for im in prepared.images] != [im.size for im in refs]
    (raw,) = fast_engine.run([edit])
    (ready,) = fast_engine.run([prepared])
    assert max_diff(raw.images[0], ready.images[0]) == 0


def test_incompatible_requests_run_in_sub_batches(fast_engine: Flux2Engine) -> None:
    small = request("small", size=ImageSize(64, 64))
    large = request("large", size=ImageSize(128, 96), images=(noise_image(64, 64, 3),) * 2)
    events: list[StepEvent] = []
    results = fast_engine.run([small, large], on_step=events.append)
    assert [r.images[0].size for r in results] == [(64, 64), (128, 96)]
    assert [e.request_ids for e in events] == [("small",), ("small",), ("large",), ("large",)]


@pytest.mark.parametrize("count", [1, 4])
def test_one_and_four_reference_images(fast_engine: Flux2Engine, count: int) -> None:
    refs = tuple(noise_image(96 + 16 * i, 96, i) for i in range(count))
    (result,) = fast_engine.run([request(images=refs)])
    assert len(result.images) == 1
    assert result.images[0].size == (128, 128)
    assert pixels(result.images[0]).std() > 1  # a picture, not a blank canvas


def test_more_references_change_the_output(fast_engine: Flux2Engine) -> None:
    refs = tuple(noise_image(96, 96, i) for i in range(4))
    (one,) = fast_engine.run([request(images=refs[:1])])
    (four,) = fast_engine.run([request(images=refs)])
    assert max_diff(one.images[0], four.images[0]) > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_size_preset(fast_engine: Flux2Engine, preset: str) -> None:
    size = PRESETS[preset]
    (result,) = fast_engine.run([request(size=size, images=(noise_image(64, 64, 0),))])
    assert result.images[0].size == (size.width, size.height)


def test_custom_size_off_the_16_pixel_grid_is_exact_and_centre_cropped(
    fast_engine: Flux2Engine,
) -> None:
    (odd,) = fast_engine.run([request(size=ImageSize(120, 100))])
    (grid,) = fast_engine.run([request(size=ImageSize(128, 112))])
    assert odd.images[0].size == (120, 100)
    expected = grid.images[0].crop((4, 6, 124, 106))
    assert max_diff(odd.images[0], expected) == 0


def test_cancellation_stops_at_once_without_decoding(
    engine: Flux2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[StepEvent] = []
    decodes: list[int] = []
    real_decode = Flux2Engine._decode

    def counting_decode(pipe: Flux2Pipeline, rows: object) -> list[Image.Image]:
        decodes.append(1)
        return real_decode(pipe, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(Flux2Engine, "_decode", staticmethod(counting_decode))
    (result,) = engine.run(
        [request("c1")],
        on_step=events.append,
        should_cancel=lambda request_id: len(events) >= 3,
    )
    assert result.cancelled
    assert result.images == ()
    assert len(events) == 3
    assert decodes == []


def test_prompt_expansion_returns_the_expanded_prompt(fast_engine: Flux2Engine) -> None:
    refs = (noise_image(96, 96, 1), noise_image(112, 96, 2))  # 2 refs: the 0.42.1 bug path
    (expanded,) = fast_engine.run([request(images=refs, expand=True, seed=1)])
    (again,) = fast_engine.run([request(images=refs, expand=True, seed=1)])
    assert expanded.prompt
    assert expanded.prompt != "make the car #FF0000"
    assert again.prompt == expanded.prompt  # seeded: the same request expands the same way
    assert expanded.images[0].size == (128, 128)
    assert expanded.timings["prompt_expansion"] > 0


def test_missing_checkpoint_is_a_weights_error(tmp_path: Path) -> None:
    engine = Flux2Engine(Flux2EngineConfig(model_path=tmp_path / "nowhere"))
    with pytest.raises(WeightsError, match="model_index.json"):
        engine.load()


@pytest.fixture
def network_blocked(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # prove we do not rely on it
    return attempts


def test_loads_and_runs_with_the_network_blocked(
    tiny_checkpoint: Path, network_blocked: list[object]
) -> None:
    engine = make_engine(tiny_checkpoint, schedule=TWO_STEPS)
    (result,) = engine.run([request()])
    assert result.images[0].size == (128, 128)
    assert network_blocked == []


def test_lora_is_fused_at_load_time(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    pipe = Flux2Pipeline.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    lora: dict[str, torch.Tensor] = {}
    for name, module in pipe.transformer.named_modules():
        if name.endswith(("attn.to_q", "attn.to_v")) and isinstance(module, torch.nn.Linear):
            rank = 4
            lora[f"transformer.{name}.lora_A.weight"] = torch.randn(
                rank, module.in_features, generator=generator
            )
            lora[f"transformer.{name}.lora_B.weight"] = torch.randn(
                module.out_features, rank, generator=generator
            )
    assert lora, "the tiny transformer has attention projections to adapt"
    path = tmp_path / "flash-lora.safetensors"
    save_file(lora, str(path))

    turbo = frozenset({"turbo"})  # fused only when the turbo regime is all the server serves
    base = make_engine(tiny_checkpoint, schedule=TWO_STEPS)
    fused = make_engine(tiny_checkpoint, schedule=TWO_STEPS, lora_path=path, regimes=turbo)
    zero = make_engine(
        tiny_checkpoint, schedule=TWO_STEPS, lora_path=path, lora_scale=0.0, regimes=turbo
    )
    (plain,) = base.run([request()])
    (with_lora,) = fused.run([request()])
    (with_zero,) = zero.run([request()])
    assert max_diff(plain.images[0], with_lora.images[0]) > 0
    assert max_diff(plain.images[0], with_zero.images[0]) == 0
    assert not any("lora" in n for n, _ in fused.pipe.transformer.named_parameters())


def test_missing_lora_file_is_a_weights_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="LoRA"):
        make_engine(tiny_checkpoint, lora_path=tmp_path / "absent.safetensors")


def _pickled_copy(checkpoint: Path, dest: Path, component: str) -> Path:
    """``checkpoint`` with ``component``'s weights as a pickle (``.bin``) instead of safetensors."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(checkpoint, dest)
    [weights] = (dest / component).glob("*.safetensors")
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    return dest


def test_pickled_weights_are_never_loaded(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Only safetensors are loaded (``use_safetensors=True``): a component stored as a pickle is
    a WeightsError, although diffusers would load it by default."""
    pickled = _pickled_copy(tiny_checkpoint, tmp_path / "pickled", "vae")
    assert Flux2Pipeline.from_pretrained(pickled, dtype=torch.float32).vae is not None  # default
    with pytest.raises(WeightsError, match="safetensors"):
        make_engine(pickled)


def test_a_lora_that_is_not_safetensors_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """diffusers unpickles a LoRA whose name does not end in .safetensors, whatever
    ``use_safetensors`` says: the engine refuses the file before diffusers sees it."""
    path = tmp_path / "flash-lora.bin"
    torch.save({}, path)
    with pytest.raises(WeightsError, match="not a .safetensors file"):
        make_engine(tiny_checkpoint, lora_path=path)


def test_warmup_runs_a_small_edit_then_fals_default_request(
    fast_engine: Flux2Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first user request at the default size must not pay the shape's set-up."""
    seen: list[tuple[tuple[int, int], tuple[tuple[int, int], ...], int]] = []
    run = fast_engine.run

    def recording_run(batch: Sequence[EditRequest], *args: Any, **kwargs: Any) -> Any:
        seen.extend(
            ((r.size.width, r.size.height), tuple(im.size for im in r.images), r.num_images)
            for r in batch
        )
        return run(batch, *args, **kwargs)

    monkeypatch.setattr(fast_engine, "run", recording_run)
    fast_engine.warmup()
    side = math.isqrt(fast_engine.config.reference_pixels) // 16 * 16
    assert seen == [((64, 64), ((64, 64),), 1), ((1024, 1024), ((side, side),), 1)]


def test_warmup_shapes_follow_the_settings() -> None:
    assert warmup_shapes(1024 * 1024) == [(64, 64, 1), (1024, 1024, 1)]
    assert warmup_shapes(512 * 512, compile_blocks=True) == [
        (64, 64, 1),
        (96, 96, 1),
        (64, 64, 2),
        (1024, 512, 1),
    ]
    assert warmup_shapes(100 * 100)[-1] == (1024, 96, 1)  # on the 16-pixel grid
