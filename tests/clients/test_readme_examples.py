"""The README's upload and OpenAI examples run as written (only the address and the CA file are
swapped for the test server's) against a real ``flux2-edit serve --model tiny``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.helpers.node import JS_DIR

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
HTTP_ORIGIN = "http://127.0.0.1:8000"
HTTPS_HOST = "127.0.0.1:8443"


def blocks(language: str, marker: str) -> list[str]:
    found = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in found if marker in block]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FAL_", "SSL_CERT_", "OPENAI_", "NODE_", "FLUX2_"))
    }
    env.update(NO_PROXY="*", **extra)
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with ``in.png``, the picture the examples edit."""
    Image.new("RGB", (128, 96), (200, 40, 40)).save(tmp_path / "in.png")
    return tmp_path


def test_the_readme_has_the_examples() -> None:
    assert len(blocks("python", "upload_file(")) == 1
    assert len(blocks("js", "readFile(")) == 1
    assert len(blocks("python", "from openai import OpenAI")) == 2


def test_python_upload_example(server: Any, workdir: Path) -> None:
    (block,) = blocks("python", "upload_file(")
    script = block.replace(HTTPS_HOST, server.host_port).replace("certs/ca.pem", str(server.ca))
    (workdir / "example.py").write_text(script)
    out = run([sys.executable, "example.py"], workdir, clean_env())
    url, _, output = out.strip().partition(" -> ")
    assert url.startswith(f"{server.origin}/uploads/"), out
    assert output.startswith(f"{server.origin}/files/"), out


def test_js_upload_example(node: str, server: Any, workdir: Path) -> None:
    (block,) = blocks("js", "readFile(")
    script = JS_DIR / f"readme-example-{os.getpid()}.mjs"  # beside node_modules
    script.write_text(block.replace(HTTP_ORIGIN, server.origin))
    try:
        out = run([node, str(script)], workdir, clean_env(NODE_EXTRA_CA_CERTS=str(server.ca)))
    finally:
        script.unlink()
    assert out.strip().startswith(f"{server.origin}/files/"), out


@pytest.mark.parametrize("marker", ["b64decode", "stream=True"])
def test_openai_examples(http_server: Any, workdir: Path, marker: str) -> None:
    (block,) = [b for b in blocks("python", "from openai import OpenAI") if marker in b]
    (workdir / "example.py").write_text(block.replace(HTTP_ORIGIN, http_server.origin))
    out = run([sys.executable, "example.py"], workdir, clean_env())
    if marker == "b64decode":
        # 512 text tokens, the 128x96 reference fed at 144x96 (the test server's reference
        # pixels: 128²) in 16x16 patches, and a 1024² output
        assert int(out.split()[0]) == 512 + 9 * 6 + 64 * 64
        with Image.open(workdir / "out.png") as written:
            assert written.size == (1024, 1024)
    else:
        # size=auto: the reference's 4:3 at about 1 MP; previews a quarter of that
        assert out.strip().split("\n") == [
            "image_edit.partial_image 296x220",
            "image_edit.partial_image 296x220",
            "image_edit.completed 1184x880",
        ], out
