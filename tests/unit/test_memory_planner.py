"""The memory planner: profiles chosen from component sizes, and sizes read from headers (CPU)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from safetensors import safe_open

from core.errors import ConfigError, WeightsError
from pipelines.memory import (
    GB,
    MIN_HEADROOM,
    ComponentSizes,
    MemoryProfile,
    activation_headroom,
    gpu_need,
    measure_checkpoint,
    parse_profile,
    plan,
)

# FLUX.2 [dev] in bf16 (docs/reference/flux2-diffusers.md §4); fp8 and encode-only sizes are the
# §2.8/§5 figures (an fp8 transformer ~32.3 GB, the text encoder without layers 31+/lm_head/vision
# 35.8).
REAL = ComponentSizes(
    transformer=64_450_000_000,
    text_encoder=48_000_000_000,
    vae=170_000_000,
    transformer_fp8=32_300_000_000,
    text_encoder_encode_only=35_800_000_000,
)
H200 = 141 * GB
H100 = 80 * GB
RTX_24GB = 24 * GB
FLOAT_DTYPES = {"F32", "F16", "BF16"}


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> Path:
    """The session's tiny checkpoint (``weights.tiny.build_tiny_checkpoint``); read only."""
    return tiny_checkpoint


def loaded_bytes(folder: Path, *, dtype_bytes: int | None = None) -> dict[str, int]:
    """Per tensor, its size from the real tensor data (safetensors' own loader)."""
    sizes: dict[str, int] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = handle.get_tensor(name)
                itemsize = tensor.element_size()
                if dtype_bytes is not None and tensor.is_floating_point():
                    itemsize = dtype_bytes
                sizes[name] = tensor.numel() * itemsize
    return sizes


# -- the planner ------------------------------------------------------------------------------


def test_h200_holds_everything_resident() -> None:
    chosen = plan(H200, REAL)
    assert chosen.profile is MemoryProfile.RESIDENT
    assert chosen.fits
    assert chosen.need_bytes == REAL.total + activation_headroom(REAL)
    assert "125.5 GB of 141.0 GB" in chosen.reason


def test_h100_offloads_the_text_encoder() -> None:
    chosen = plan(H100, REAL)
    assert chosen.profile is MemoryProfile.OFFLOAD_TEXT_ENCODER
    assert chosen.fits
    assert chosen.need_bytes == REAL.transformer + REAL.vae + activation_headroom(REAL)
    assert "resident needs ~125.5 GB" in chosen.reason  # says why the faster one was skipped


def test_24_gb_falls_back_to_model_offload_and_says_it_does_not_fit() -> None:
    chosen = plan(RTX_24GB, REAL)
    assert chosen.profile is MemoryProfile.MODEL_OFFLOAD
    assert not chosen.fits
    assert "nothing fits 24.0 GB" in chosen.reason


def test_no_gpu_means_cpu() -> None:
    chosen = plan(None, REAL)
    assert chosen.profile is MemoryProfile.CPU
    assert chosen.fits


def test_fp8_and_an_encode_only_text_encoder_shrink_the_resident_need() -> None:
    need = gpu_need(MemoryProfile.RESIDENT, REAL, fp8=True, encode_only_text_encoder=True)
    # Activations do not shrink with fp8 weights: the headroom stays that of the bf16 model.
    assert need == 32_300_000_000 + 35_800_000_000 + 170_000_000 + activation_headroom(REAL)
    # 81.2 GB: just over a nominal 80 GB, inside the ~85 GB an H100 80GB reports.
    assert plan(H100, REAL, fp8=True, encode_only_text_encoder=True).profile is (
        MemoryProfile.OFFLOAD_TEXT_ENCODER
    )
    assert plan(85 * GB, REAL, fp8=True, encode_only_text_encoder=True).profile is (
        MemoryProfile.RESIDENT
    )


def test_unmeasured_fp8_size_is_estimated_as_half() -> None:
    sizes = ComponentSizes(transformer=64 * GB, text_encoder=48 * GB, vae=0)
    need = gpu_need(MemoryProfile.OFFLOAD_TEXT_ENCODER, sizes, fp8=True, headroom=0)
    assert need == 32 * GB


def test_model_offload_holds_the_largest_model_and_the_vae() -> None:
    need = gpu_need(MemoryProfile.MODEL_OFFLOAD, REAL, headroom=0)
    assert need == REAL.transformer + REAL.vae


def test_headroom_is_a_fifth_of_the_transformer_at_least_1_gib() -> None:
    assert activation_headroom(REAL) == 12_890_000_000
    assert activation_headroom(ComponentSizes(400_000, 500_000, 300_000)) == MIN_HEADROOM


def test_explicit_headroom_and_extra_bytes_are_counted() -> None:
    tight = plan(H100, REAL, headroom=0, extra_bytes=16 * GB)  # 64.6 + 16 > 80
    assert tight.profile is MemoryProfile.MODEL_OFFLOAD
    assert not tight.fits
    roomy = plan(H100, REAL, headroom=1 * GB)
    assert roomy.profile is MemoryProfile.OFFLOAD_TEXT_ENCODER


def test_a_tiny_checkpoint_is_resident_on_any_gpu() -> None:
    tiny = ComponentSizes(400_000, 500_000, 300_000)
    assert plan(8 * GB, tiny).profile is MemoryProfile.RESIDENT


def test_override_is_honoured() -> None:
    chosen = plan(H200, REAL, override="offload_text_encoder")
    assert chosen.profile is MemoryProfile.OFFLOAD_TEXT_ENCODER
    assert chosen.fits
    assert chosen.reason.startswith("set by memory_profile")
    assert plan(H200, REAL, override=MemoryProfile.MODEL_OFFLOAD).profile is (
        MemoryProfile.MODEL_OFFLOAD
    )


def test_override_that_cannot_fit_still_applies_flagged() -> None:
    chosen = plan(H100, REAL, override="resident")
    assert chosen.profile is MemoryProfile.RESIDENT
    assert not chosen.fits
    assert "does not fit" in chosen.reason


def test_auto_override_plans_automatically() -> None:
    assert plan(H100, REAL, override="auto") == plan(H100, REAL)


def test_gpu_profile_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="runs on the CPU"):
        plan(None, REAL, override="offload_text_encoder")
    assert plan(None, REAL, override="cpu").profile is MemoryProfile.CPU


def test_cpu_profile_with_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device=cpu"):
        plan(H200, REAL, override="cpu")


def test_unknown_profile_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="auto, resident, offload_text_encoder, model_offload"):
        parse_profile("everything")
    assert parse_profile("auto") is None
    assert parse_profile("model_offload") is MemoryProfile.MODEL_OFFLOAD


# -- sizes from safetensors headers ------------------------------------------------------------


@pytest.mark.parametrize("component", ["transformer", "text_encoder", "vae"])
def test_sizes_equal_the_sum_of_tensor_bytes(tiny: Path, component: str) -> None:
    sizes = measure_checkpoint(tiny)
    assert getattr(sizes, component) == sum(loaded_bytes(tiny / component).values())


def test_sizes_scale_floats_to_the_target_dtype(tiny: Path) -> None:
    stored = measure_checkpoint(tiny)
    as_bf16 = measure_checkpoint(tiny, dtype_bytes=2)
    assert as_bf16.transformer == stored.transformer // 2  # all float32
    assert as_bf16.vae == sum(loaded_bytes(tiny / "vae", dtype_bytes=2).values())
    assert as_bf16.vae > stored.vae // 2  # the BatchNorm's int64 counter keeps its 8 bytes


def test_encode_only_text_encoder_drops_what_encoding_never_reads(tiny: Path) -> None:
    tensors = loaded_bytes(tiny / "text_encoder")
    kept = {
        name: size
        for name, size in tensors.items()
        if name.startswith("language_model.model.")  # embeddings, the 31 layers, the final norm
    }
    assert any(name.startswith("vision_tower.") for name in tensors)
    assert measure_checkpoint(tiny).text_encoder_encode_only == sum(kept.values())
    # Fewer kept layers drop their tensors too.
    two_layers = measure_checkpoint(tiny, text_layers=2).text_encoder_encode_only
    assert two_layers == sum(
        size
        for name, size in kept.items()
        if ".layers." not in name or int(name.split(".layers.")[1].split(".")[0]) < 2
    )


def test_fp8_size_counts_linear_weights_at_one_byte(tiny: Path) -> None:
    sizes = measure_checkpoint(tiny, dtype_bytes=2)
    with safe_open(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        expected = 0
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensor = f.get_tensor(name)
            if tensor.ndim == 2 and name.endswith(".weight"):
                expected += tensor.numel() + 4 * tensor.shape[0]
            else:
                expected += tensor.numel() * 2
    assert sizes.transformer_fp8 == expected
    assert sizes.transformer_fp8 is not None and sizes.transformer_fp8 < sizes.transformer


def test_sharded_component_sums_every_shard(tiny: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny, tmp_path / "tiny"))
    original = measure_checkpoint(copy)
    source = copy / "vae" / "diffusion_pytorch_model.safetensors"
    shutil.copy(source, copy / "vae" / "diffusion_pytorch_model-00002.safetensors")
    assert measure_checkpoint(copy).vae == 2 * original.vae


def test_real_layout_text_encoder_names_are_recognised(tmp_path: Path) -> None:
    """transformers 5 saves ``model.language_model.layers.N``; 4.x ``language_model.model.…``."""
    names = {
        "model.language_model.embed_tokens.weight": [4, 2],
        "model.language_model.layers.30.mlp.up_proj.weight": [2, 2],
        "model.language_model.layers.31.mlp.up_proj.weight": [2, 2],
        "language_model.model.layers.39.mlp.up_proj.weight": [2, 2],
        "lm_head.weight": [4, 2],
        "model.vision_tower.patch_conv.weight": [2, 2],
        "model.multi_modal_projector.linear_1.weight": [2, 2],
    }
    for component in ("transformer", "text_encoder", "vae"):
        write_header_only(tmp_path / component / "model.safetensors", names)
    sizes = measure_checkpoint(tmp_path)
    assert sizes.text_encoder == (8 + 4 + 4 + 4 + 8 + 4 + 4) * 2
    assert sizes.text_encoder_encode_only == (8 + 4) * 2  # embeddings and layer 30


def write_header_only(path: Path, shapes: dict[str, list[int]]) -> None:
    """A valid bf16 safetensors file with zeroed data."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in shapes.items():
        size = shape[0] * shape[1] * 2
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def test_a_component_without_safetensors_is_a_weights_error(tiny: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny, tmp_path / "tiny"))
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no .safetensors"):
        measure_checkpoint(copy)


def test_a_corrupt_header_is_a_weights_error(tiny: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny, tmp_path / "tiny"))
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(WeightsError, match="cannot read the safetensors header"):
        measure_checkpoint(copy)


def test_measuring_reads_no_torch() -> None:
    """The planner module imports without torch (it runs in the API process too)."""
    import subprocess
    import sys

    code = "import sys, pipelines.memory; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
