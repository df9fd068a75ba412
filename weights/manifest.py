"""The manifest of the real checkpoints (``weights/manifest.json``), as typed dataclasses.

One entry for the FLUX.2 [dev] pipeline in diffusers layout and one for fal's optional Turbo
LoRA. Each names its repository, revision, gating, licence, allow-patterns, approximate sizes and,
once known, per-file sizes and sha256 (after cog's ``weights.lock``).

Local layout under a download root::

    <root>/FLUX.2-dev/               model_index.json, scheduler/, text_encoder/, ... (--model)
    <root>/FLUX.2-dev-Turbo/flux.2-turbo-lora.safetensors
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from core.errors import WeightsError

MANIFEST_RESOURCE = "manifest.json"
#: What an allow-pattern may select: weights as safetensors (never pickles), JSON configs and
#: tokenizer files (a chat template, a sentencepiece model, BPE merges). No code, no pickles.
SAFE_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt")

T = TypeVar("T")


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint, relative to its local folder."""

    path: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True)
class ManifestEntry:
    """One Hugging Face repository to fetch and check."""

    name: str
    repo_id: str
    local_dir: str
    revision: str
    #: False while ``revision`` is a branch ("main"): pin it to a commit sha after a download.
    revision_pinned: bool
    #: None when not known.
    gated: bool | None
    licence: str
    licence_url: str | None
    allow_patterns: tuple[str, ...]
    #: The single weight file of a file-only entry (the LoRA); None for a pipeline folder.
    weight_file: str | None
    #: JSON file -> key/values that identify this checkpoint (tells it from the tiny one).
    identify: Mapping[str, Mapping[str, Any]]
    #: Approximate safetensors bytes per component folder.
    approx_component_bytes: Mapping[str, int]
    approx_total_bytes: int | None
    files: tuple[FileEntry, ...]
    notes: str = ""

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    model: ManifestEntry
    lora: ManifestEntry
    note: str = ""

    @property
    def entries(self) -> tuple[ManifestEntry, ...]:
        return (self.model, self.lora)

    def model_dir(self, root: Path) -> Path:
        """Where the pipeline folder lives under a download root."""
        return Path(root) / self.model.local_dir

    def lora_file(self, root: Path) -> Path:
        """Where the Turbo LoRA file lives under a download root."""
        assert self.lora.weight_file is not None
        return Path(root) / self.lora.local_dir / self.lora.weight_file


def load_manifest(path: Path | None = None) -> Manifest:
    """Read and validate the manifest (the packaged ``weights/manifest.json`` by default).

    Raises:
        WeightsError: the file is missing, not JSON, or has missing/mistyped fields.
    """
    where = str(path) if path is not None else f"weights/{MANIFEST_RESOURCE}"
    try:
        if path is None:
            text = resources.files("weights").joinpath(MANIFEST_RESOURCE).read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
        raw = json.loads(text)
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot read the weights manifest {where}: {error}") from error
    try:
        return _manifest(_dict(raw, "manifest"))
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"invalid weights manifest {where}: {error}") from error


def find_lora(model_dir: Path, manifest: Manifest | None = None) -> Path | None:
    """The Turbo LoRA next to a downloaded pipeline folder, if it is there."""
    manifest = manifest or load_manifest()
    candidate = manifest.lora_file(Path(model_dir).parent)
    return candidate if candidate.is_file() else None


def _manifest(raw: dict[str, Any]) -> Manifest:
    version = _typed(raw, "schema_version", int)
    if version != 1:
        raise ValueError(f"schema_version {version} is not supported (expected 1)")
    return Manifest(
        schema_version=version,
        model=_entry(_dict(raw["model"], "model")),
        lora=_entry(_dict(raw["lora"], "lora")),
        note=str(raw.get("note", "")),
    )


def _entry(raw: dict[str, Any]) -> ManifestEntry:
    name = _typed(raw, "name", str)
    gated = raw["gated"]
    if gated is not None and not isinstance(gated, bool):
        raise TypeError(f"{name}.gated must be true, false or null")
    sizes = _dict(raw["approx_component_bytes"], f"{name}.approx_component_bytes")
    for folder, size in sizes.items():
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name}.approx_component_bytes[{folder}] must be a positive integer")
    identify = _dict(raw["identify"], f"{name}.identify")
    return ManifestEntry(
        name=name,
        repo_id=_typed(raw, "repo_id", str),
        local_dir=_typed(raw, "local_dir", str),
        revision=_typed(raw, "revision", str),
        revision_pinned=_typed(raw, "revision_pinned", bool),
        gated=gated,
        licence=_typed(raw, "licence", str),
        licence_url=_optional(raw, "licence_url", str),
        allow_patterns=_allow_patterns(raw["allow_patterns"], f"{name}.allow_patterns"),
        weight_file=_optional(raw, "weight_file", str),
        identify={k: _dict(v, f"{name}.identify[{k}]") for k, v in identify.items()},
        approx_component_bytes=dict(sizes),
        approx_total_bytes=_optional(raw, "approx_total_bytes", int),
        files=tuple(_file(_dict(f, f"{name}.files[]")) for f in _list(raw["files"], name)),
        notes=str(raw.get("notes", "")),
    )


def _allow_patterns(value: object, what: str) -> tuple[str, ...]:
    patterns = _strings(value, what)
    for pattern in patterns:
        if not pattern.endswith(SAFE_SUFFIXES):
            raise ValueError(
                f"{what}: {pattern!r} may select more than safetensors, JSON and tokenizer files "
                f"(a pattern must end in one of {', '.join(SAFE_SUFFIXES)})"
            )
    return tuple(patterns)


def _file(raw: dict[str, Any]) -> FileEntry:
    sha = _optional(raw, "sha256", str)
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ValueError(f"files[{raw.get('path')}].sha256 must be 64 lowercase hex digits")
    return FileEntry(path=_typed(raw, "path", str), size=_typed(raw, "size", int), sha256=sha)


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a list")
    return value


def _strings(value: object, what: str) -> list[str]:
    items = _list(value, what)
    if not items or not all(isinstance(item, str) for item in items):
        raise TypeError(f"{what} must be a non-empty list of strings")
    return items


def _typed(raw: dict[str, Any], key: str, kind: type[T]) -> T:
    value = raw[key]
    # bool is an int subclass: keep true/false out of integer fields.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key} must be {kind.__name__}, got {value!r}")
    return value


def _optional(raw: dict[str, Any], key: str, kind: type[T]) -> T | None:
    if raw.get(key) is None:
        return None
    return _typed(raw, key, kind)
