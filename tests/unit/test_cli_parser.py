"""The ``flux2-edit`` command line: parser, settings mapping and error exits (service/cli.py)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import service.engines
from pipelines.fake import FakeEngine
from pipelines.types import CancelCheck, EditRequest, EditResult, StepCallback
from service.cli import build_parser, main, settings_from_args
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FLUX2_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLUX2_CACHE_DIR", str(tmp_path / "cache"))


class _RecordingEngine(FakeEngine):
    def __init__(self) -> None:
        super().__init__(num_steps=2)
        self.requests: list[EditRequest] = []

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        self.requests.extend(batch)
        return super().run(batch, on_step, should_cancel)


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> list[_RecordingEngine]:
    """Replaces model building: every engine the CLI asks for is recorded (and is a fake)."""
    built: list[_RecordingEngine] = []

    def fake_create_engine(settings: Any, progress: Any = None) -> _RecordingEngine:
        engine = _RecordingEngine()
        engine.load()
        built.append(engine)
        return engine

    monkeypatch.setattr(service.engines, "create_engine", fake_create_engine)
    return built


def _png(path: Path, size: tuple[int, int] = (96, 64)) -> Path:
    Image.new("RGB", size, (30, 60, 90)).save(path)
    return path


# -- parser -----------------------------------------------------------------------------------


def test_edit_arguments_parse() -> None:
    args = build_parser().parse_args(
        [
            "edit",
            "--image",
            "a.png",
            "--image",
            "b.png",
            "--prompt",
            "x",
            "--image-size",
            "1024x768",
            "--num-images",
            "2",
            "--seed",
            "5",
            "--model",
            "tiny",
        ]
    )
    assert args.command == "edit"
    assert args.image == ["a.png", "b.png"]
    assert args.prompt == "x"
    assert args.image_size == "1024x768"
    assert args.num_images == 2
    assert args.seed == 5
    assert args.model == "tiny"
    assert args.out == "out.png"
    assert args.guidance_scale is None
    assert args.expand_prompt is False
    assert args.schedule is None
    assert args.lora is None
    assert callable(args.handler)


def test_edit_defaults() -> None:
    args = build_parser().parse_args(["edit", "--image", "a.png", "--prompt", "x"])
    assert args.image_size == "square_hd"
    assert args.num_images == 1
    assert args.seed is None


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["edit", "--prompt", "x"],  # --image is required
        ["edit", "--image", "a.png"],  # --prompt is required
        ["edit", "--image", "a.png", "--prompt", "x", "--seed", "five"],
        ["weights"],
        ["serve-forever"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        build_parser().parse_args(argv)
    assert exc_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_weights_commands_parse() -> None:
    parser = build_parser()
    verify = parser.parse_args(["weights", "verify", "/ckpt"])
    assert verify.weights_command == "verify"
    assert verify.dir == Path("/ckpt")
    download = parser.parse_args(["weights", "download", "--no-lora"])
    assert download.dest == Path("models")
    assert download.no_lora is True
    tiny = parser.parse_args(["weights", "tiny", "out"])
    assert tiny.dir == Path("out")


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_args_maps_model_options(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "edit",
            "--image",
            "a.png",
            "--prompt",
            "x",
            "--model",
            "/models/FLUX.2-dev",
            "--lora",
            str(tmp_path / "turbo.safetensors"),
            "--lora-scale",
            "0.75",
            "--schedule",
            "1.0,0.5,0.1",
            "--reference-pixels",
            "262144",
            "--dtype",
            "float16",
            "--device",
            "cuda:1",
            "--cache-dir",
            str(tmp_path / "elsewhere"),
        ]
    )
    settings = settings_from_args(args)
    assert settings.engine.model == "/models/FLUX.2-dev"
    assert settings.engine.lora_path == tmp_path / "turbo.safetensors"
    assert settings.engine.lora_scale == 0.75
    assert settings.engine.schedule == "1.0,0.5,0.1"
    assert settings.engine.reference_pixels == 262144
    assert settings.engine.dtype == "float16"
    assert settings.engine.device == "cuda:1"
    assert settings.storage.cache_dir == tmp_path / "elsewhere"


def test_environment_fills_what_is_not_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLUX2_MODEL", "from-env")
    monkeypatch.setenv("FLUX2_SCHEDULE", "dev-28")
    monkeypatch.setenv("FLUX2_DEVICE", "cpu")
    monkeypatch.setenv("FLUX2_LORA_PATH", str(tmp_path / "env.safetensors"))
    args = build_parser().parse_args(
        ["edit", "--image", "a.png", "--prompt", "x", "--model", "tiny"]
    )
    settings = settings_from_args(args)
    assert settings.engine.model == "tiny"  # the option wins
    assert settings.engine.schedule == "dev-28"
    assert settings.engine.device == "cpu"
    assert settings.engine.lora_path == tmp_path / "env.safetensors"
    assert settings.storage.cache_dir == tmp_path / "cache"


def test_settings_from_args_for_a_command_without_model_options() -> None:
    args = build_parser().parse_args(["weights", "verify", "/ckpt"])
    assert settings_from_args(args).engine.model is None


# -- main: errors -----------------------------------------------------------------------------


def test_bad_schedule_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], engines: list[_RecordingEngine]
) -> None:
    code = main(["edit", "--image", "x.png", "--prompt", "p", "--schedule", "warp"])
    assert code == 2
    err = capsys.readouterr().err
    assert "flux2-edit: invalid setting schedule" in err
    assert "unknown schedule 'warp'" in err
    assert "Traceback" not in err
    assert engines == []


def test_bad_schedule_from_environment_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLUX2_SCHEDULE", "0.1,0.9")
    assert main(["edit", "--image", "x.png", "--prompt", "p"]) == 2
    assert "strictly decrease" in capsys.readouterr().err


def test_bad_output_suffix_fails_before_any_model(
    capsys: pytest.CaptureFixture[str], engines: list[_RecordingEngine]
) -> None:
    code = main(["edit", "--image", "x.png", "--prompt", "p", "--out", "o.gif", "--model", "tiny"])
    assert code == 2
    err = capsys.readouterr().err
    assert "o.gif" in err
    assert ".png, .jpg, .jpeg or .webp" in err
    assert "Traceback" not in err
    assert engines == []


def test_missing_image_fails_before_any_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engines: list[_RecordingEngine]
) -> None:
    missing = tmp_path / "missing.png"
    code = main(["edit", "--image", str(missing), "--prompt", "p", "--model", "tiny"])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert engines == []


def test_bad_image_size_fails_before_any_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engines: list[_RecordingEngine]
) -> None:
    image = _png(tmp_path / "ref.png")
    code = main(
        ["edit", "--image", str(image), "--prompt", "p", "--image-size", "99x99", "--model", "tiny"]
    )
    assert code == 2
    assert "greater than or equal to 512" in capsys.readouterr().err
    assert engines == []


def test_weights_verify_on_an_empty_folder_returns_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["weights", "verify", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().out


# -- main: a whole edit with the fake engine --------------------------------------------------


def test_edit_writes_one_file_per_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engines: list[_RecordingEngine]
) -> None:
    ref_a = _png(tmp_path / "a.png")
    ref_b = _png(tmp_path / "b.png", (80, 80))
    out = tmp_path / "results" / "o.jpg"
    code = main(
        [
            "edit",
            "--image",
            str(ref_a),
            "--image",
            str(ref_b),
            "--prompt",
            "make it red",
            "--image-size",
            "640x512",
            "--num-images",
            "2",
            "--seed",
            "5",
            "--model",
            "tiny",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    (engine,) = engines
    (request,) = engine.requests
    assert request.prompt == "make it red"
    assert len(request.images) == 2
    assert (request.size.width, request.size.height) == (640, 512)
    assert request.seed == 5
    assert request.num_images == 2
    assert request.guidance_scale == 2.5  # turbo's default
    written = [tmp_path / "results" / "o-0.jpg", tmp_path / "results" / "o-1.jpg"]
    captured = capsys.readouterr()
    assert captured.out.split() == [str(p) for p in written]
    assert "seed 5" in captured.err
    for path in written:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            assert image.format == "JPEG"
            assert image.size == (640, 512)


def test_edit_guidance_defaults_to_the_schedule(
    tmp_path: Path, engines: list[_RecordingEngine]
) -> None:
    ref = _png(tmp_path / "a.png")
    out = tmp_path / "o.png"
    argv = ["edit", "--image", str(ref), "--prompt", "p", "--image-size", "square"]
    assert main([*argv, "--schedule", "dev-28", "--out", str(out), "--model", "tiny"]) == 0
    assert engines[0].requests[0].guidance_scale == 4.0
    assert out.is_file()
    assert main([*argv, "--guidance-scale", "7", "--out", str(out), "--model", "tiny"]) == 0
    assert engines[1].requests[0].guidance_scale == 7.0


@pytest.mark.parametrize(
    ("redis_url", "prefetch"),
    [(None, None), ("redis://127.0.0.1:6379/0", 2)],
    ids=["alone", "redis"],
)
def test_workers_sharing_redis_prefetch_only_near_the_end_of_a_batch(
    redis_url: str | None, prefetch: int | None
) -> None:
    from service.bootstrap import Role, worker_options

    settings = Settings(safety_checker="none", redis_url=redis_url)
    role = Role.SERVE if redis_url is None else Role.WORKER
    assert worker_options(settings, role).prefetch_steps == prefetch
