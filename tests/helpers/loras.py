"""Small LoRA files written offline, for tests (safetensors, and the wrong things)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file


def write_lora(path: Path, *, seed: int = 0, rank: int = 2, keys: tuple[str, ...] = ()) -> Path:
    """A tiny LoRA in safetensors: ``lora_A``/``lora_B`` pairs (or the tensor names ``keys``)."""
    rng = np.random.default_rng(seed)
    names = keys or (
        "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
        "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight",
    )
    tensors = {
        name: rng.standard_normal((rank, 8) if i % 2 == 0 else (8, rank)).astype(np.float32)
        for i, name in enumerate(names)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def write_pickle(path: Path) -> Path:
    """A pickled "checkpoint": what must never be loaded."""
    path.write_bytes(pickle.dumps({"lora_A": [1.0, 2.0]}))
    return path


def write_hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face hub cache holding ``repo`` at one revision, laid out as huggingface_hub
    writes it (``models--owner--name/{refs/main, snapshots/<rev>/..., blobs/...}``)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    for name, data in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


@contextmanager
def file_server(files: dict[str, bytes]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``files`` by path on ``127.0.0.1`` (404 for others): (its origin, paths asked)."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            data = files.get(self.path)
            self.send_response(200 if data is not None else 404)
            self.send_header("content-length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
