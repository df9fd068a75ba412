"""The offline tiny FLUX.2 checkpoint: deterministic, real classes, loadable and runnable with the
network blocked, special tokens and chat template lined up with the real Mistral3 interfaces."""

from __future__ import annotations

import filecmp
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import Flux2Pipeline
from huggingface_hub import constants
from jinja2.exceptions import TemplateError
from PIL import Image

from core.errors import WeightsError
from weights import tiny
from weights.tiny import TINY_CHECKPOINT_NAME, build_tiny_checkpoint, ensure_tiny_checkpoint
from weights.verify import verify

pytestmark = pytest.mark.slow

SYSTEM_AND_USER = [
    {"role": "system", "content": [{"type": "text", "text": "You edit images."}]},
    {"role": "user", "content": [{"type": "text", "text": "make the car #FF0000"}]},
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines: list[str] = []
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", progress=lines.append)
    assert len(lines) >= 5  # one line per component
    return path


@pytest.fixture(scope="module")
def pipe(checkpoint: Path) -> Flux2Pipeline:
    pipe = Flux2Pipeline.from_pretrained(checkpoint, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Any connection attempt raises (and is recorded); the hub is in offline mode."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"network blocked in this test: connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return attempts


def references() -> list[Image.Image]:
    return [
        Image.new("RGB", (128, 128), (30, 120, 200)),
        Image.new("RGB", (96, 128), (200, 10, 20)),
    ]


def test_two_builds_are_byte_identical(checkpoint: Path, tmp_path: Path) -> None:
    again = build_tiny_checkpoint(tmp_path / "again")
    weights = sorted(p.relative_to(checkpoint) for p in checkpoint.rglob("*.safetensors"))
    assert len(weights) == 3
    for relative in weights:
        assert (checkpoint / relative).read_bytes() == (again / relative).read_bytes(), relative
    every = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(checkpoint, again, every, shallow=False)
    assert (mismatch, errors) == ([], [])


def test_real_classes_in_the_diffusers_layout(checkpoint: Path) -> None:
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2Pipeline"
    assert {k: v for k, v in index.items() if not k.startswith("_")} == {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
        "tokenizer": ["transformers", "PixtralProcessor"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    }
    assert verify(checkpoint).ok
    scheduler = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["shift"] == 3.0
    assert scheduler["use_dynamic_shifting"] is True
    assert scheduler["time_shift_type"] == "exponential"


def test_no_leftovers_and_not_overwritten(checkpoint: Path) -> None:
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]
    with pytest.raises(WeightsError, match="not an empty folder"):
        build_tiny_checkpoint(checkpoint)


def test_special_tokens_line_up_with_the_mistral3_config(pipe: Flux2Pipeline) -> None:
    tokenizer = pipe.tokenizer.tokenizer
    config = pipe.text_encoder.config
    ids = tokenizer.convert_tokens_to_ids
    assert ids("[IMG]") == config.image_token_index == 10
    assert ids("<pad>") == tokenizer.pad_token_id == config.text_config.pad_token_id == 11
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    generation = pipe.text_encoder.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 11)
    assert ids(["[INST]", "[/INST]", "[IMG_BREAK]", "[IMG_END]"]) == [3, 4, 12, 13]
    assert ids(["[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]) == [17, 18]
    assert tokenizer.padding_side == "left"
    assert config.text_config.num_hidden_layers == 31
    assert pipe.transformer.config.joint_attention_dim == 3 * config.text_config.hidden_size


def test_chat_template(pipe: Flux2Pipeline) -> None:
    processor = pipe.tokenizer
    text = processor.apply_chat_template(SYSTEM_AND_USER, tokenize=False)
    assert text == (
        "<s>[SYSTEM_PROMPT]You edit images.[/SYSTEM_PROMPT][INST]make the car #FF0000[/INST]"
    )
    with_image = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "t"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "again"},
    ]
    assert processor.tokenizer.apply_chat_template(with_image, tokenize=False) == (
        "<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST][IMG]t[/INST]ok</s>[INST]again[/INST]"
    )
    with pytest.raises(TemplateError, match="roles"):
        processor.tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    with pytest.raises(TemplateError, match="blocks"):
        processor.tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio"}]}], tokenize=False
        )

    encoded = processor.apply_chat_template(
        [SYSTEM_AND_USER],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding="max_length",
        truncation=True,
        max_length=64,
    )
    input_ids = encoded["input_ids"][0].tolist()
    first = input_ids.index(1)
    assert set(input_ids[:first]) == {11}  # left padding with <pad>
    assert input_ids[first : first + 2] == [1, 17]  # <s>[SYSTEM_PROMPT], bos not doubled
    assert encoded["attention_mask"][0].tolist() == [0] * first + [1] * (64 - first)


def test_runs_two_steps(pipe: Flux2Pipeline) -> None:
    result = pipe(
        prompt="make the car #FF0000",
        image=references()[:1],
        height=128,
        width=128,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(0),
    )
    assert result.images[0].size == (128, 128)


def test_caption_upsampling_on_two_images(pipe: Flux2Pipeline) -> None:
    upsampled = pipe.upsample_prompt(
        "make it red", images=[references()], temperature=0.15, device="cpu"
    )
    assert isinstance(upsampled, list)
    assert len(upsampled) == 1
    assert isinstance(upsampled[0], str)


def test_loads_and_runs_with_the_network_blocked(checkpoint: Path, no_network: list[Any]) -> None:
    pipe = Flux2Pipeline.from_pretrained(checkpoint, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        prompt="make it blue",
        image=references()[:1],
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    )
    assert result.images.shape == (1, 64, 64, 3)
    assert no_network == []


def test_ensure_builds_once_offline(
    tmp_path: Path, no_network: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ensure_tiny_checkpoint from two threads at once builds once (the lock file serialises)."""
    builds: list[Path] = []

    def counting_build(dest: Path, **kwargs: Any) -> Path:
        builds.append(dest)
        return build_tiny_checkpoint(dest, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", counting_build)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_tiny_checkpoint(tmp_path)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / TINY_CHECKPOINT_NAME] * 2
    assert builds == [tmp_path / TINY_CHECKPOINT_NAME]
    assert verify(tmp_path / TINY_CHECKPOINT_NAME).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".{TINY_CHECKPOINT_NAME}.lock",
        TINY_CHECKPOINT_NAME,
    ]
    mtime = (tmp_path / TINY_CHECKPOINT_NAME / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_checkpoint(tmp_path) == tmp_path / TINY_CHECKPOINT_NAME
    assert (tmp_path / TINY_CHECKPOINT_NAME / "model_index.json").stat().st_mtime_ns == mtime
    assert no_network == []


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_vae() -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tiny, "_vae", broken_vae)
    with pytest.raises(WeightsError, match="RuntimeError: disk on fire"):
        build_tiny_checkpoint(tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_build_leaves_the_callers_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_checkpoint(tmp_path / "ckpt")
    assert torch.equal(torch.rand(3), expected)
