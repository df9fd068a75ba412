"""The packaged manifest of the real checkpoints: content, honesty and validation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub.utils import filter_repo_objects

from core.errors import WeightsError
from weights.manifest import find_lora, load_manifest

REAL_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model-00001-of-00010.safetensors",
    "text_encoder/model.safetensors.index.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model-00001-of-00007.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
BFL_SINGLE_FILES = ["flux2-dev.safetensors", "ae.safetensors", "README.md", "teaser.png"]
TOKENIZER_FILES = [
    "tokenizer/chat_template.jinja",
    "tokenizer/processor_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer.model",
]
# What a repository may also hold and must never be fetched: pickles and code.
UNSAFE_FILES = [
    "transformer/diffusion_pytorch_model.bin",
    "text_encoder/pytorch_model-00001-of-00002.bin",
    "vae/diffusion_pytorch_model.pt",
    "vae/model.ckpt",
    "text_encoder/weights.pth",
    "tokenizer/tokenizer.pkl",
    "transformer/modeling_flux2.py",
    "scheduler/scheduler.py",
    "text_encoder/flax_model.msgpack",
    "text_encoder/tf_model.h5",
    "vae/model.onnx",
]


def packaged() -> dict[str, Any]:
    text = (Path(__file__).parents[2] / "weights" / "manifest.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data), "utf-8")
    return path


def test_names_the_real_repositories() -> None:
    manifest = load_manifest()
    assert manifest.model.repo_id == "black-forest-labs/FLUX.2-dev"
    assert manifest.model.gated is True
    assert manifest.lora.repo_id == "fal/FLUX.2-dev-Turbo"
    assert manifest.lora.weight_file == "flux.2-turbo-lora.safetensors"
    assert [e.name for e in manifest.entries] == ["flux2-dev", "flux2-dev-turbo-lora"]


def test_allow_patterns_pick_the_diffusers_folders_not_the_bfl_single_files() -> None:
    patterns = list(load_manifest().model.allow_patterns)
    picked = list(filter_repo_objects(REAL_FILES + BFL_SINGLE_FILES, allow_patterns=patterns))
    assert picked == REAL_FILES


def test_allow_patterns_pick_safetensors_json_and_tokenizer_files_only() -> None:
    patterns = list(load_manifest().model.allow_patterns)
    listing = REAL_FILES + TOKENIZER_FILES + UNSAFE_FILES
    picked = list(filter_repo_objects(listing, allow_patterns=patterns))
    assert picked == REAL_FILES + TOKENIZER_FILES


@pytest.mark.parametrize(
    "pattern", ["transformer/*", "*", "vae/*.bin", "text_encoder/*.safetensors*", "*.py"]
)
def test_a_pattern_that_could_select_pickles_or_code_is_refused(
    tmp_path: Path, pattern: str
) -> None:
    data = packaged()
    data["model"]["allow_patterns"].append(pattern)
    with pytest.raises(WeightsError, match="safetensors, JSON and tokenizer files"):
        load_manifest(write(tmp_path, data))


def test_lora_patterns_pick_only_the_lora_file() -> None:
    lora = load_manifest().lora
    files = ["flux.2-turbo-lora.safetensors", "README.md", "comparison.png"]
    assert list(filter_repo_objects(files, allow_patterns=list(lora.allow_patterns))) == [
        "flux.2-turbo-lora.safetensors"
    ]


def test_revisions_are_honestly_unpinned_and_no_hashes_are_invented() -> None:
    for entry in load_manifest().entries:
        assert entry.revision == "main"
        assert entry.revision_pinned is False
        assert not re.fullmatch(r"[0-9a-f]{40}", entry.revision)
        assert entry.files == ()


def test_approximate_sizes_come_from_the_parameter_counts() -> None:
    manifest = load_manifest()
    sizes = manifest.model.approx_component_bytes
    assert sizes == {
        "transformer": 64_450_000_000,
        "text_encoder": 48_000_000_000,
        "vae": 168_000_000,
    }
    assert manifest.model.approx_total_bytes == sum(sizes.values())
    assert manifest.lora.approx_total_bytes is None


def test_local_layout_helpers(tmp_path: Path) -> None:
    manifest = load_manifest()
    assert manifest.model_dir(tmp_path) == tmp_path / "FLUX.2-dev"
    lora = manifest.lora_file(tmp_path)
    assert lora == tmp_path / "FLUX.2-dev-Turbo" / "flux.2-turbo-lora.safetensors"
    assert find_lora(manifest.model_dir(tmp_path), manifest) is None
    lora.parent.mkdir()
    lora.write_bytes(b"x")
    assert find_lora(manifest.model_dir(tmp_path), manifest) == lora


def test_reads_per_file_entries(tmp_path: Path) -> None:
    data = packaged()
    data["model"]["files"] = [{"path": "vae/config.json", "size": 12, "sha256": "ab" * 32}]
    entry = load_manifest(write(tmp_path, data)).model
    assert entry.files[0].path == "vae/config.json"
    assert entry.files[0].size == 12
    assert entry.files[0].sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["model"].pop("repo_id"), "repo_id"),
        (lambda d: d["model"].update(revision_pinned="no"), "revision_pinned"),
        (lambda d: d["model"].update(approx_total_bytes=True), "approx_total_bytes"),
        (lambda d: d["lora"].update(gated="maybe"), "gated"),
        (lambda d: d["model"].update(allow_patterns=[]), "allow_patterns"),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d["model"].update(files=[{"path": "x", "size": 1, "sha256": "nope"}]), "sha256"),
    ],
)
def test_invalid_manifest_is_a_weights_error(tmp_path: Path, mutate: Any, expected: str) -> None:
    data = packaged()
    mutate(data)
    with pytest.raises(WeightsError, match=expected):
        load_manifest(write(tmp_path, data))


def test_unreadable_manifest_is_a_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("{not json", "utf-8")
    with pytest.raises(WeightsError, match="cannot read"):
        load_manifest(path)
    with pytest.raises(WeightsError, match="cannot read"):
        load_manifest(tmp_path / "missing.json")
