"""The ``flux2-edit`` command line, run as a user would: a real subprocess, the tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def flux2_edit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("flux2-edit", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "service.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX2_")}
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_weights_tiny_then_edit_writes_a_512_png_with_a_progress_bar(tmp_path: Path) -> None:
    built = flux2_edit("weights", "tiny", str(tmp_path / "tiny"), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "tiny" / "model_index.json").is_file()

    Image.new("RGB", (640, 480), (200, 30, 30)).save(tmp_path / "in.png")
    edited = flux2_edit(
        "edit",
        "--model", str(tmp_path / "tiny"),
        "--image", "in.png",
        "--prompt", "make the car #FF0000",
        "--image-size", "square",
        "--seed", "42",
        "--out", "out.png",
        cwd=tmp_path,
    )  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    with Image.open(tmp_path / "out.png") as out:
        assert out.format == "PNG"
        assert out.size == (512, 512)
    assert "denoising" in edited.stderr
    assert "8/8" in edited.stderr
    assert "seed 42" in edited.stderr


def test_edit_reports_bad_input_without_a_traceback(tmp_path: Path) -> None:
    result = flux2_edit(
        "edit", "--model", "tiny", "--image", "missing.png", "--prompt", "x", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "missing.png" in result.stderr
    assert "Traceback" not in result.stderr
