"""Helpers (not fixtures) for the browser tests: servers to drive, pictures, artifacts."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from benchmarks.common import tiny_server
from tests.helpers.services import fake_components, serving

FakeServerFactory = Callable[..., AbstractContextManager["Server"]]
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS_DIR") or Path(__file__).parent / "artifacts")


@dataclass(frozen=True)
class Server:
    origin: str  # e.g. http://127.0.0.1:8123
    log: Path | None = None


@contextmanager
def running_tiny_server(root: Path) -> Iterator[Server]:
    """``flux2-edit serve --model tiny`` over http on a free port, as ``make demo`` runs it,
    with references resized to ~128x128 so a CPU edit takes a fraction of a second."""
    settings = {"FLUX2_REFERENCE_PIXELS": str(128 * 128), "FLUX2_LOG_LEVEL": "info"}
    with tiny_server(root, settings, ready_timeout=180) as server:
        yield Server(origin=server.origin, log=server.log)


@contextmanager
def running_fake_server(
    root: Path,
    *,
    api_keys: str = "",
    step_seconds: float = 0.0,
    flag_everything: bool = False,
    **settings: Any,
) -> Iterator[Server]:
    """The real app and worker in this process, on the instant fake engine, served by uvicorn.

    For what the tiny model cannot show cheaply: API keys, slow steps (live progress, cancel)
    and flagged images.
    """
    from pipelines.fake import FakeEngine
    from pipelines.safety import AlwaysFlagChecker, NeverFlagChecker

    parts = fake_components(
        root,
        engine=lambda: FakeEngine(num_steps=8, step_seconds=step_seconds),
        safety=AlwaysFlagChecker if flag_everything else NeverFlagChecker,
        api_keys=api_keys,
        **settings,
    )
    with serving(parts) as origin:
        yield Server(origin=origin)


def reference_png(path: Path, size: tuple[int, int] = (160, 120)) -> Path:
    """A small, recognisable reference picture: a red car-ish box on a blue-grey ground."""
    image = Image.new("RGB", size, (90, 110, 140))
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle((0, height * 2 // 3, width, height), fill=(60, 60, 60))
    draw.rectangle((width // 5, height // 3, width * 4 // 5, height * 3 // 4), fill=(200, 30, 40))
    wheel_top = height * 2 // 3
    for left in (width // 4, width * 3 // 4 - 24):
        draw.ellipse((left, wheel_top, left + 24, wheel_top + 24), fill=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def save_artifact(source: Path, name: str) -> Path:
    """Copy a screenshot to the artifacts folder and return where it went."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / name
    shutil.copyfile(source, target)
    return target
