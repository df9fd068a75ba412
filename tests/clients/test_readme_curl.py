"""The README's curl examples work as written against a real ``flux2-edit serve --model tiny``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
DEMO_ORIGIN = "127.0.0.1:8000"


def curl_blocks() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if "curl " in block]


def run_block(block: str, server: Any) -> subprocess.CompletedProcess[str]:
    script = "set -euo pipefail\n" + block.replace(DEMO_ORIGIN, server.host_port)
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_readme_has_the_sync_and_queue_examples() -> None:
    blocks = curl_blocks()
    assert any("/fal-ai/flux-2/flash/edit" in b and "/queue/" not in b for b in blocks)
    assert any("/queue/fal-ai/flux-2" in b and "/status" in b for b in blocks)
    assert all(DEMO_ORIGIN in b for b in blocks), "examples target make demo's address"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_sync_run_example(http_server: Any) -> None:
    (block,) = [b for b in curl_blocks() if "/queue/" not in b]
    result = run_block(block, http_server)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["images"][0]["width"] == 512
    assert output["seed"] == 42
    assert output["prompt"] == "make the car #FF5733"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_queue_example(http_server: Any) -> None:
    (block,) = [b for b in curl_blocks() if "/queue/" in b]
    result = run_block(block, http_server)
    assert result.returncode == 0, result.stderr
    decoder = json.JSONDecoder()
    output, end = decoder.raw_decode(result.stdout)
    assert output["images"][0]["height"] == 512
    cancel = json.loads(result.stdout[end:].strip())
    assert cancel == {"status": "ALREADY_COMPLETED"}
