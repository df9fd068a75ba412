"""Downloading the real checkpoints: arguments passed to the hub, and every failure mapped to a
WeightsError that says what to do. The hub is faked except in the two offline/unreachable tests."""

from __future__ import annotations

import errno
import json
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

import weights.download as download_module
from core.errors import WeightsError
from weights.download import download
from weights.manifest import load_manifest

COMPONENTS = {
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Mistral3ForConditionalGeneration"],
    "tokenizer": ["transformers", "PixtralProcessor"],
    "transformer": ["diffusers", "Flux2Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKLFlux2"],
}


def write_safetensors(path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), "utf-8")


def write_fake_pipeline(folder: Path) -> None:
    """The smallest folder verify() accepts as a Flux2Pipeline checkpoint."""
    write_json(folder / "model_index.json", {"_class_name": "Flux2Pipeline", **COMPONENTS})
    write_json(folder / "scheduler" / "scheduler_config.json", {})
    for name in ("tokenizer_config.json", "tokenizer.json", "processor_config.json"):
        write_json(folder / "tokenizer" / name, {})
    for component, weights in [
        ("text_encoder", "model.safetensors"),
        ("transformer", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
    ]:
        write_json(folder / component / "config.json", {})
        write_safetensors(folder / component / weights)


def http_error(kind: type[HfHubHTTPError], status: int) -> HfHubHTTPError:
    request = httpx2.Request(
        "GET", "https://huggingface.co/api/models/black-forest-labs/FLUX.2-dev"
    )
    return kind(f"{status} Client Error", response=httpx2.Response(status, request=request))


def raising(error: BaseException) -> Callable[..., str]:
    def fake(repo_id: str, **kwargs: Any) -> str:
        raise error

    return fake


@pytest.fixture
def plenty_of_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = SimpleNamespace(total=10**15, used=0, free=10**15)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage)


@pytest.fixture
def no_stored_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download_module, "get_token", lambda: None)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode off, whatever the environment says (huggingface_hub reads it at import)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.usefixtures("plenty_of_disk")
def test_downloads_each_entry_with_the_manifest_revision_and_patterns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = load_manifest()
    calls: list[dict[str, Any]] = []

    def fake(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        local_dir = Path(kwargs["local_dir"])
        if repo_id == manifest.model.repo_id:
            write_fake_pipeline(local_dir)
        else:
            write_safetensors(local_dir / "flux.2-turbo-lora.safetensors")
        return str(local_dir)

    monkeypatch.setattr(download_module, "snapshot_download", fake)
    lines: list[str] = []
    result = download(tmp_path / "w", token="hf_test", progress=lines.append)

    assert result == tmp_path / "w" / "FLUX.2-dev"
    assert [c["repo_id"] for c in calls] == ["black-forest-labs/FLUX.2-dev", "fal/FLUX.2-dev-Turbo"]
    for call, entry in zip(calls, manifest.entries, strict=True):
        assert call["revision"] == "main"
        assert call["allow_patterns"] == list(entry.allow_patterns)
        assert call["local_dir"] == tmp_path / "w" / entry.local_dir
        assert call["token"] == "hf_test"
    assert any("not a pinned commit" in line for line in lines)
    assert any("fal/FLUX.2-dev-Turbo: complete" in line for line in lines)


@pytest.mark.usefixtures("plenty_of_disk")
def test_without_lora_only_the_pipeline_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repos: list[str] = []

    def fake(repo_id: str, **kwargs: Any) -> str:
        repos.append(repo_id)
        write_fake_pipeline(Path(kwargs["local_dir"]))
        return str(kwargs["local_dir"])

    monkeypatch.setattr(download_module, "snapshot_download", fake)
    download(tmp_path, include_lora=False)
    assert repos == ["black-forest-labs/FLUX.2-dev"]


@pytest.mark.usefixtures("plenty_of_disk")
def test_incomplete_result_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot_download hands back an existing partial folder when the hub is unreachable."""

    def fake(repo_id: str, **kwargs: Any) -> str:
        write_fake_pipeline(Path(kwargs["local_dir"]))
        (Path(kwargs["local_dir"]) / "vae" / "diffusion_pytorch_model.safetensors").unlink()
        return str(kwargs["local_dir"])

    monkeypatch.setattr(download_module, "snapshot_download", fake)
    with pytest.raises(WeightsError, match="incomplete") as caught:
        download(tmp_path, include_lora=False)
    assert "✗ vae/: no *.safetensors weights" in caught.value.message


@pytest.mark.usefixtures("plenty_of_disk", "no_stored_token", "online")
@pytest.mark.parametrize(
    ("error", "token", "expected"),
    [
        (http_error(GatedRepoError, 403), None, "gated and no Hugging Face token was found"),
        (http_error(GatedRepoError, 403), "hf_x", "accept the licence at https://huggingface.co/"),
        (http_error(RepositoryNotFoundError, 401), None, "not found.*set HF_TOKEN"),
        (http_error(RepositoryNotFoundError, 404), "hf_x", "not found.*token's account"),
        (http_error(RevisionNotFoundError, 404), "hf_x", "revision 'main' does not exist"),
        (http_error(HfHubHTTPError, 401), "hf_bad", "rejected the token \\(401\\)"),
        (http_error(HfHubHTTPError, 403), "hf_x", "refused \\(403\\)"),
        (http_error(HfHubHTTPError, 429), "hf_x", "rate-limiting"),
        (http_error(HfHubHTTPError, 503), "hf_x", "HTTP 503.*try again later"),
        (
            IncompleteSnapshotError("partial", snapshot_path="/x"),
            None,
            "cannot reach the Hugging Face Hub and the local copy .* is incomplete",
        ),
        (LocalEntryNotFoundError("no snapshot"), None, "cannot reach the Hugging Face Hub at"),
        (ConnectionResetError("reset by peer"), None, "cannot reach the Hugging Face Hub at"),
        (httpx2.ReadTimeout("timed out"), None, "cannot reach the Hugging Face Hub at"),
        (OSError(errno.ENOSPC, "No space left on device"), None, "disk filled up"),
        (PermissionError(errno.EACCES, "Permission denied"), None, "cannot write the files"),
        (ValueError("odd"), None, "downloading black-forest-labs/FLUX.2-dev failed: ValueError"),
    ],
)
def test_hub_failures_become_weights_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    token: str | None,
    expected: str,
) -> None:
    monkeypatch.setattr(download_module, "snapshot_download", raising(error))
    with pytest.raises(WeightsError, match=expected) as caught:
        download(tmp_path, token=token)
    assert caught.value.__cause__ is error


@pytest.mark.usefixtures("plenty_of_disk", "online")
def test_gated_with_a_stored_login_token_says_the_account_lacks_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(download_module, "get_token", lambda: "hf_from_login")
    monkeypatch.setattr(
        download_module, "snapshot_download", raising(http_error(GatedRepoError, 403))
    )
    with pytest.raises(WeightsError, match="account has no access"):
        download(tmp_path)


def test_not_enough_disk_space_fails_before_contacting_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = SimpleNamespace(total=10**12, used=0, free=10**9)
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage)
    monkeypatch.setattr(download_module, "snapshot_download", raising(AssertionError("called")))
    with pytest.raises(WeightsError, match="not enough disk space"):
        download(tmp_path)


def test_unwritable_destination_is_a_weights_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WeightsError, match="cannot create the download folder"):
        download(blocker / "sub")


@pytest.mark.usefixtures("plenty_of_disk")
def test_really_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set") as caught:
        download(tmp_path)
    assert time.monotonic() - started < 10
    assert isinstance(caught.value.__cause__, LocalEntryNotFoundError)
    assert not (tmp_path / "FLUX.2-dev" / "model_index.json").exists()


@pytest.mark.usefixtures("plenty_of_disk", "online")
def test_really_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(
        WeightsError, match="cannot reach the Hugging Face Hub at http://127.0.0.1:9"
    ):
        download(tmp_path, endpoint="http://127.0.0.1:9")
    assert time.monotonic() - started < 10
