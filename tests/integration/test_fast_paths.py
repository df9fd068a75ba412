"""Fast paths and memory profiles of the FLUX.2 engine on the tiny checkpoint (CPU, float32).

What the CPU cannot show: speed (no GPU benchmark exists yet, so every fast path stays off by
default), the GPU memory profiles (on a CPU device they are refused, see below) and fp8 (torchao
needs CUDA compute capability >= 8.9). What it does show: each fast path is wired, leaves the image
unchanged, and bad settings fail at load with an error that says what would work.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ConfigError, InvalidRequest
from pipelines.flux2 import Flux2Engine, Flux2EngineConfig, available_attention_backends
from pipelines.memory import MemoryProfile
from pipelines.schedules import parse_schedule
from pipelines.sizes import ImageSize
from pipelines.types import EditRequest, EditResult

pytestmark = pytest.mark.slow

TWO_STEPS = parse_schedule("1.0,0.5")
REF_PIXELS = 128 * 128


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def request(side: int = 128, num_images: int = 1, *, expand: bool = False) -> EditRequest:
    return EditRequest(
        request_id="r1",
        prompt="make the car #FF0000",
        images=(noise_image(128, 96, 1),),
        size=ImageSize(side, side),
        seed=7,
        num_images=num_images,
        enable_prompt_expansion=expand,
    )


def make_engine(checkpoint: Path, **overrides: object) -> Flux2Engine:
    config = Flux2EngineConfig(
        model_path=checkpoint, reference_pixels=REF_PIXELS, schedule=TWO_STEPS
    )
    engine = Flux2Engine(dataclasses.replace(config, **overrides))  # type: ignore[arg-type]
    engine.load()
    return engine


def max_diff(a: EditResult, b: EditResult) -> int:
    assert len(a.images) == len(b.images)
    return max(
        int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max())
        for x, y in zip(a.images, b.images, strict=True)
    )


@pytest.fixture(scope="module")
def baseline(tiny_checkpoint: Path) -> EditResult:
    """The image with every fast path off (the defaults)."""
    engine = make_engine(tiny_checkpoint)
    assert engine.plan is not None and engine.plan.profile is MemoryProfile.CPU
    assert engine.fast_paths == ()
    return engine.run([request()])[0]


# -- fused QKV ---------------------------------------------------------------------------------


def test_fused_qkv_gives_the_same_image(tiny_checkpoint: Path, baseline: EditResult) -> None:
    engine = make_engine(tiny_checkpoint, fuse_qkv=True)
    attention = engine.pipe.transformer.transformer_blocks[0].attn
    assert attention.fused_projections
    assert hasattr(attention, "to_qkv") and hasattr(attention, "to_added_qkv")
    # The unfused copies diffusers keeps are freed (3.6 GB for FLUX.2 [dev]).
    assert not any(hasattr(attention, name) for name in ("to_q", "to_k", "add_v_proj"))
    assert max_diff(engine.run([request()])[0], baseline) <= 1


# -- attention backends ------------------------------------------------------------------------


def test_native_attention_backend_gives_the_same_image(
    tiny_checkpoint: Path, baseline: EditResult
) -> None:
    engine = make_engine(tiny_checkpoint, attention_backend="native")
    assert engine.fast_paths == ("attention native",)
    assert max_diff(engine.run([request()])[0], baseline) <= 1


def test_auto_attention_backend_picks_native_on_the_cpu(tiny_checkpoint: Path) -> None:
    engine = make_engine(tiny_checkpoint, attention_backend="auto")
    assert engine.attention_backend == "native"
    assert engine.fast_paths == ("attention native",)


def test_flash_backends_need_half_precision() -> None:
    """Checked without a GPU: ``_native_flash`` (SDPA's flash kernel) needs no package."""
    from pipelines.flux2 import _check_attention_backend

    cuda = torch.device("cuda")
    assert "_native_flash" in available_attention_backends(cuda)
    with pytest.raises(ConfigError, match="needs dtype bfloat16 or float16, not float32"):
        _check_attention_backend("_native_flash", cuda, torch.float32)
    _check_attention_backend("_native_flash", cuda, torch.bfloat16)


def test_cpu_lists_only_cpu_backends() -> None:
    assert available_attention_backends(torch.device("cpu")) == ["native", "_native_math"]


def test_unknown_attention_backend_is_refused_with_the_choices(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown attention_backend 'fa9'.*native, _native_math"):
        make_engine(tiny_checkpoint, attention_backend="fa9")


def test_gpu_attention_backend_on_the_cpu_is_refused(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match=r"'_flash_3_hub' is not available on cpu.*native"):
        make_engine(tiny_checkpoint, attention_backend="_flash_3_hub")


# -- memory profiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["resident", "offload_text_encoder", "model_offload"])
def test_gpu_memory_profiles_are_refused_on_the_cpu(tiny_checkpoint: Path, profile: str) -> None:
    """A GPU profile on a CPU device is a contradiction in the settings: refused at load, before
    any weight is read, rather than silently run as ``cpu``."""
    with pytest.raises(ConfigError, match=f"memory_profile '{profile}'.*runs on the CPU"):
        make_engine(tiny_checkpoint, memory_profile=profile)


def test_cpu_profile_is_accepted_on_the_cpu(tiny_checkpoint: Path) -> None:
    engine = make_engine(tiny_checkpoint, memory_profile="cpu")
    assert engine.plan is not None and engine.plan.profile is MemoryProfile.CPU


def test_unknown_memory_profile_is_refused(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="unknown memory_profile 'huge'"):
        make_engine(tiny_checkpoint, memory_profile="huge")


# -- fp8 ---------------------------------------------------------------------------------------


def test_fp8_is_refused_without_a_suitable_gpu(tiny_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match=r"compute capability >= 8.9.*runs on cpu"):
        make_engine(tiny_checkpoint, quantize="fp8")
    with pytest.raises(ConfigError, match="unknown quantize 'int3'"):
        make_engine(tiny_checkpoint, quantize="int3")


# -- encode-only text encoder ------------------------------------------------------------------


def test_without_prompt_expansion_the_text_encoder_is_trimmed(
    tiny_checkpoint: Path, baseline: EditResult
) -> None:
    engine = make_engine(tiny_checkpoint, allow_prompt_expansion=False)
    text_encoder = engine.pipe.text_encoder
    assert isinstance(text_encoder.lm_head, torch.nn.Identity)
    assert text_encoder.model.vision_tower is None
    assert max_diff(engine.run([request()])[0], baseline) == 0
    with pytest.raises(InvalidRequest, match="prompt expansion is disabled") as caught:
        engine.run([request(expand=True)])
    assert caught.value.problems[0].loc == ("body", "enable_prompt_expansion")


def test_trimming_a_deeper_text_encoder_keeps_the_hidden_states_read(
    tiny_checkpoint: Path,
) -> None:
    """The tiny encoder has exactly 31 layers; one with 34 shows layers 31+ are really dropped
    and hidden states 10, 20 and 30 do not change."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from pipelines.flux2 import _trim_text_encoder

    config = Mistral3Config.from_pretrained(tiny_checkpoint / "text_encoder")
    config.text_config.num_hidden_layers = 34
    torch.manual_seed(0)
    model = Mistral3ForConditionalGeneration(config).eval()
    ids = torch.randint(20, 1000, (1, 24))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        _trim_text_encoder(model, 31)
        after = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(model.model.language_model.layers) == 31
    assert len(after.hidden_states) == 32
    for layer in (10, 20, 30):
        assert torch.equal(before.hidden_states[layer], after.hidden_states[layer])


# -- regional compilation ----------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_blocks_after_warmup_do_not_recompile(
    tiny_checkpoint: Path, baseline: EditResult
) -> None:
    """Inductor on the CPU needs a C compiler. The warm-up compiles three times (about 30 s on
    two cores with a warm inductor cache, 90 s cold); later requests of new sizes and batch sizes
    must not compile again, which is the point of warming up."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile (inductor) on the CPU needs a C compiler; none is installed")
    engine = make_engine(tiny_checkpoint, compile_blocks=True)
    block = engine.pipe.transformer.single_transformer_blocks[0]
    assert block._compiled_call_impl is not None  # compile_repeated_blocks wired
    engine.warmup()
    with torch._dynamo.config.patch(error_on_recompile=True):
        same = engine.run([request()])[0]
        other = engine.run([request(side=160, num_images=3)])[0]
    assert max_diff(same, baseline) <= 1
    assert len(other.images) == 3
