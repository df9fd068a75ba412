"""verify() on a freshly built tiny checkpoint, then on damaged copies of it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest

from weights.manifest import FileEntry, Manifest, load_manifest
from weights.tiny import build_tiny_checkpoint
from weights.verify import read_safetensors_header, verify

TRANSFORMER_WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"
REAL_TRANSFORMER = {
    "num_layers": 8,
    "num_single_layers": 48,
    "num_attention_heads": 48,
    "joint_attention_dim": 15360,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("verify") / "tiny")


@pytest.fixture
def checkpoint(built: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(built, tmp_path / "tiny"))


def failed_paths(path: Path, manifest: Manifest | None = None) -> list[str]:
    return [check.path for check in verify(path, manifest).problems]


def pretend_real(checkpoint: Path) -> None:
    """Make the tiny transformer config look like FLUX.2 [dev] so the manifest mode kicks in."""
    config_path = checkpoint / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(REAL_TRANSFORMER)
    config_path.write_text(json.dumps(config))


def write_safetensors(path: Path, payload: bytes = bytes(8)) -> None:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [len(payload) // 4], "data_offsets": [0, len(payload)]}}
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)


def test_fresh_tiny_checkpoint_is_ok(built: Path) -> None:
    report = verify(built)
    assert report.ok, report.render()
    assert report.mode == "structure"
    text = report.render()
    assert "✓ model_index.json: Flux2Pipeline" in text
    assert "✓ text_encoder/model.safetensors" in text
    assert "✓ tokenizer/processor_config.json" in text
    assert "✗" not in text
    assert text.endswith("OK")


def test_missing_weight_file(checkpoint: Path) -> None:
    (checkpoint / TRANSFORMER_WEIGHTS).unlink()
    report = verify(checkpoint)
    assert not report.ok
    assert [(p.path, p.detail) for p in report.problems] == [
        ("transformer/", "no *.safetensors weights")
    ]
    assert "✗ transformer/: no *.safetensors weights" in report.render()
    assert "FAILED: 1 problem" in report.render()


def test_missing_config(checkpoint: Path) -> None:
    (checkpoint / "scheduler" / "scheduler_config.json").unlink()
    assert failed_paths(checkpoint) == ["scheduler/scheduler_config.json"]


def test_corrupt_header(checkpoint: Path) -> None:
    path = checkpoint / TRANSFORMER_WEIGHTS
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))
    report = verify(checkpoint)
    assert [p.path for p in report.problems] == [TRANSFORMER_WEIGHTS]
    assert "unreadable safetensors header: header is not JSON" in report.problems[0].detail


def test_absurd_header_length(checkpoint: Path) -> None:
    path = checkpoint / TRANSFORMER_WEIGHTS
    data = bytearray(path.read_bytes())
    data[0:8] = struct.pack("<Q", 2**40)
    path.write_bytes(bytes(data))
    assert "does not fit" in verify(checkpoint).problems[0].detail


def test_truncated_file(checkpoint: Path) -> None:
    path = checkpoint / "vae" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    report = verify(checkpoint)
    assert [p.path for p in report.problems] == ["vae/diffusion_pytorch_model.safetensors"]
    assert "truncated" in report.problems[0].detail


def test_missing_component_folder(checkpoint: Path) -> None:
    shutil.rmtree(checkpoint / "vae")
    report = verify(checkpoint)
    assert [p.path for p in report.problems] == ["vae/"]
    assert "folder missing (diffusers.AutoencoderKLFlux2)" in report.render()


def test_component_missing_from_model_index(checkpoint: Path) -> None:
    index_path = checkpoint / "model_index.json"
    index = json.loads(index_path.read_text())
    index["tokenizer"] = [None, None]
    index_path.write_text(json.dumps(index))
    assert failed_paths(checkpoint) == ["tokenizer"]


def test_wrong_pipeline_class_and_missing_index(checkpoint: Path) -> None:
    index_path = checkpoint / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "FluxPipeline"
    index_path.write_text(json.dumps(index))
    assert "expected 'Flux2Pipeline'" in verify(checkpoint).problems[0].detail
    index_path.unlink()
    assert failed_paths(checkpoint) == ["model_index.json"]


def test_not_a_directory(tmp_path: Path) -> None:
    report = verify(tmp_path / "nothing")
    assert not report.ok
    assert "not a directory" in report.render()


def shard_text_encoder(checkpoint: Path) -> Path:
    """Split text_encoder/model.safetensors in two shards with an index, as the real one is."""
    from safetensors.torch import load_file, save_file

    folder = checkpoint / "text_encoder"
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, folder / shard)
        weight_map.update(dict.fromkeys(shard_names, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_sharded_weights_every_shard_is_checked(checkpoint: Path) -> None:
    folder = shard_text_encoder(checkpoint)
    report = verify(checkpoint)
    assert report.ok, report.render()
    assert "✓ text_encoder/model.safetensors.index.json: 297 tensors in 2 shards" in report.render()

    (folder / "model-00002-of-00002.safetensors").unlink()
    report = verify(checkpoint)
    assert [(p.path, p.detail) for p in report.problems] == [
        ("text_encoder/model-00002-of-00002.safetensors", "missing")
    ]


def test_index_naming_a_tensor_its_shard_lacks(checkpoint: Path) -> None:
    folder = shard_text_encoder(checkpoint)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    problems = verify(checkpoint).problems
    assert len(problems) == 1
    assert "1 tensors listed in the index are not in the shard (first: extra.weight)" in (
        problems[0].detail
    )


def test_download_root_layout_is_accepted(built: Path, tmp_path: Path) -> None:
    shutil.copytree(built, tmp_path / "FLUX.2-dev")
    report = verify(tmp_path)
    assert report.ok, report.render()
    assert "✓ FLUX.2-dev/model_index.json" in report.render()


def test_real_checkpoint_is_checked_against_the_manifest(checkpoint: Path) -> None:
    pretend_real(checkpoint)
    report = verify(checkpoint)
    assert report.ok, report.render()
    assert report.mode == "manifest black-forest-labs/FLUX.2-dev@main"
    text = report.render()
    assert "lists no per-file sizes or sha256" in text
    assert "not pinned to a commit sha" in text
    assert "transformer/ holds" in text  # 400 KB, far from 64.45 GB: a warning, not a failure
    assert "optional LoRA fal/FLUX.2-dev-Turbo not found" in text


def test_manifest_sizes_and_hashes(checkpoint: Path) -> None:
    pretend_real(checkpoint)
    weights = checkpoint / "vae" / "diffusion_pytorch_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    good = FileEntry("vae/diffusion_pytorch_model.safetensors", weights.stat().st_size, digest)
    manifest = load_manifest()

    def with_files(*files: FileEntry) -> Manifest:
        return dataclasses.replace(manifest, model=dataclasses.replace(manifest.model, files=files))

    report = verify(checkpoint, with_files(good))
    assert report.ok, report.render()
    assert "size and sha256 match the manifest" in report.render()

    wrong_hash = dataclasses.replace(good, sha256="0" * 64)
    assert "sha256" in verify(checkpoint, with_files(wrong_hash)).problems[0].detail
    assert verify(checkpoint, with_files(wrong_hash), check_sha256=False).ok

    wrong_size = dataclasses.replace(good, size=good.size + 1)
    assert "manifest says" in verify(checkpoint, with_files(wrong_size)).problems[0].detail

    missing = FileEntry("vae/extra.safetensors", 1)
    assert (
        "missing (listed in the manifest)"
        in verify(checkpoint, with_files(missing)).problems[0].detail
    )


def test_lora_next_to_the_pipeline(built: Path, tmp_path: Path) -> None:
    model = Path(shutil.copytree(built, tmp_path / "FLUX.2-dev"))
    pretend_real(model)
    lora = tmp_path / "FLUX.2-dev-Turbo" / "flux.2-turbo-lora.safetensors"
    write_safetensors(lora)
    report = verify(tmp_path)
    assert report.ok, report.render()
    assert "✓ FLUX.2-dev-Turbo/flux.2-turbo-lora.safetensors: 1 tensors" in report.render()

    lora.write_bytes(lora.read_bytes()[:-4])
    assert [p.path for p in verify(tmp_path).problems] == [
        "FLUX.2-dev-Turbo/flux.2-turbo-lora.safetensors"
    ]


def test_read_safetensors_header(built: Path) -> None:
    header, size = read_safetensors_header(built / TRANSFORMER_WEIGHTS)
    assert size == (built / TRANSFORMER_WEIGHTS).stat().st_size
    assert "__metadata__" not in header
    assert all(set(info) == {"dtype", "shape", "data_offsets"} for info in header.values())
