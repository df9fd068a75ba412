"""Checking LoRA files for the FLUX.2 transformer: diffusers decides the format, we check fit.

A fake "checkpoint" holding only a transformer safetensors file (three zero linear weights) keeps
these tests instant; the engine tests load real LoRAs into the tiny checkpoint.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import InvalidRequest, WeightsError
from pipelines.adapters import read_lora
from weights.loras import ATTENTION_LINEARS, build_lora, transformer_linear_shapes

LAYERS = {
    "transformer_blocks.0.attn.to_q": (32, 32),
    "transformer_blocks.0.attn.to_k": (32, 32),
    "single_transformer_blocks.0.attn.to_qkv_mlp_proj": (288, 32),
    "x_embedder": (32, 128),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake-flux2")
    (root / "transformer").mkdir()
    save_file(
        {f"{name}.weight": torch.zeros(shape) for name, shape in LAYERS.items()},
        str(root / "transformer" / "diffusion_pytorch_model.safetensors"),
    )
    return root


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_shapes_come_from_the_checkpoint_headers(model_dir: Path) -> None:
    assert transformer_linear_shapes(model_dir) == LAYERS


def test_a_built_lora_fits_and_reports_its_rank(model_dir: Path, tmp_path: Path) -> None:
    path = build_lora(model_dir, tmp_path / "style.safetensors", rank=4, seed=1)
    lora = read_lora(path, LAYERS)
    assert (lora.rank, lora.modules) == (4, 3)  # the three block linears, not x_embedder
    assert all(key.startswith("transformer.") for key in lora.state_dict)
    narrow = build_lora(model_dir, tmp_path / "attn.safetensors", targets=ATTENTION_LINEARS)
    assert read_lora(narrow, LAYERS).modules == 3


def test_the_file_name_does_not_matter_and_pickles_are_never_read(
    model_dir: Path, tmp_path: Path
) -> None:
    lora = build_lora(model_dir, tmp_path / "a.safetensors")
    renamed = tmp_path / "0123abcd"  # e.g. a content-addressed cache entry
    renamed.write_bytes(lora.read_bytes())
    assert read_lora(renamed, LAYERS).modules == 3
    pickled = tmp_path / "evil.safetensors"
    with pickled.open("wb") as handle:
        pickle.dump({"transformer.x.lora_A.weight": [1.0]}, handle)
    with pytest.raises(InvalidRequest, match="not a safetensors file"):
        read_lora(pickled, LAYERS)


def test_a_lora_for_another_model_size_names_the_layer(tmp_path: Path) -> None:
    path = write(
        tmp_path / "big.safetensors",
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 4),
        },
    )
    with pytest.raises(InvalidRequest, match=r"to_q is 32x32 here but .* lora_A \[4, 64\]"):
        read_lora(path, LAYERS)


def test_layers_this_model_lacks_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "deep.safetensors",
        {
            "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(4, 32),
            "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(32, 4),
        },
    )
    with pytest.raises(InvalidRequest, match="does not have .*transformer_blocks.7.attn.to_q"):
        read_lora(path, LAYERS)


def test_keys_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = write(  # a Stable Diffusion UNet LoRA in diffusers' old attention-processor form
        tmp_path / "sd.safetensors",
        {"unet.down_blocks.0.attentions.0.to_q_lora.down.weight": torch.zeros(4, 320)},
    )
    with pytest.raises(InvalidRequest) as caught:
        read_lora(path, LAYERS)
    assert "unet.down_blocks" in caught.value.message


def test_an_unpaired_half_and_an_empty_file_are_refused(tmp_path: Path) -> None:
    half = write(
        tmp_path / "half.safetensors",
        {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32)},
    )
    with pytest.raises(InvalidRequest, match="without its pair"):
        read_lora(half, LAYERS)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(InvalidRequest, match="not a safetensors file"):
        read_lora(empty, LAYERS)
    with pytest.raises(InvalidRequest, match="not a safetensors file"):
        read_lora(tmp_path / "missing.safetensors", LAYERS)


def test_a_checkpoint_without_weights_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no safetensors"):
        transformer_linear_shapes(tmp_path)
