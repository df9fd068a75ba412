"""Check a local FLUX.2 checkpoint before loading it: structure, safetensors headers, manifest.

``verify(path)`` accepts a pipeline folder (the one with ``model_index.json``: the tiny checkpoint
or ``<root>/FLUX.2-dev``) or a download root holding ``FLUX.2-dev/`` and ``FLUX.2-dev-Turbo/``.
It never loads tensors: a safetensors file is checked by parsing its header (8-byte little-endian
length + JSON) and comparing the file size with the end of the last tensor, which catches
truncated and corrupted files.

Two modes, picked automatically:

- **structure**: any checkpoint (the tiny one included): model_index.json, component folders,
  configs, weights (every shard of a sharded index), readable headers.
- **manifest**: when the folder is the real FLUX.2 [dev] (``identify`` in the manifest), also
  per-file sizes and sha256 from the manifest when it lists them, approximate component sizes
  (a warning only) and the optional Turbo LoRA.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weights.manifest import FileEntry, Manifest, ManifestEntry, load_manifest

PIPELINE_CLASS = "Flux2Pipeline"
COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")
MODEL_COMPONENTS = ("text_encoder", "transformer", "vae")
#: A relative deviation from ``approx_component_bytes`` above this is reported as a warning.
APPROX_SIZE_TOLERANCE = 0.10
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class Check:
    """One line of the report: a path (relative to the checked folder) and what was found."""

    path: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`; ``ok`` is False when any check failed."""

    root: Path
    mode: str = "structure"
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def passed(self, path: str, detail: str) -> None:
        self.checks.append(Check(path, True, detail))

    def failed(self, path: str, detail: str) -> None:
        self.checks.append(Check(path, False, detail))

    def render(self) -> str:
        lines = [f"Checkpoint {self.root} ({self.mode} check)"]
        lines += [f"  {'✓' if c.ok else '✗'} {c.path}: {c.detail}" for c in self.checks]
        lines += [f"  ! {warning}" for warning in self.warnings]
        problems = len(self.problems)
        if problems:
            lines.append(f"FAILED: {problems} problem{'s' if problems != 1 else ''}")
        else:
            lines.append("OK")
        return "\n".join(lines)


def verify(
    path: Path, manifest: Manifest | None = None, *, check_sha256: bool = True
) -> VerifyReport:
    """Check the checkpoint at ``path`` (a pipeline folder or a download root).

    Args:
        path: the folder to check.
        manifest: defaults to the packaged manifest; used to recognise the real checkpoint and
            for its per-file sizes and hashes.
        check_sha256: hash files whose manifest entry has a sha256 (slow on 112 GB: minutes).

    Returns:
        A report; it never raises for problems in the checkpoint itself.
    """
    manifest = manifest or load_manifest()
    root = Path(path)
    report = VerifyReport(root=root)
    if not root.is_dir():
        report.failed(".", "not a directory")
        return report
    if (root / "model_index.json").is_file() or not manifest.model_dir(root).is_dir():
        model_dir, prefix, lora = root, "", manifest.lora_file(root.parent)
    else:  # a download root
        model_dir, prefix = manifest.model_dir(root), manifest.model.local_dir + "/"
        lora = manifest.lora_file(root)
    _check_pipeline(model_dir, prefix, report)
    if _is_entry(model_dir, manifest.model):
        report.mode = f"manifest {manifest.model.repo_id}@{manifest.model.revision}"
        _check_against_manifest(model_dir, prefix, manifest.model, report, check_sha256)
        _check_lora(lora, _relative(lora, root), manifest.lora, report, check_sha256)
    elif lora.is_file():
        _check_lora(lora, _relative(lora, root), manifest.lora, report, check_sha256)
    return report


def _check_pipeline(folder: Path, prefix: str, report: VerifyReport) -> None:
    index_path = folder / "model_index.json"
    index = _read_json(index_path, prefix + "model_index.json", report)
    if index is None:
        return
    name = index.get("_class_name")
    if name != PIPELINE_CLASS:
        report.failed(prefix + "model_index.json", f"names {name!r}, expected {PIPELINE_CLASS!r}")
        return
    report.passed(prefix + "model_index.json", PIPELINE_CLASS)
    for component in COMPONENTS:
        spec = index.get(component)
        where = prefix + component
        if not isinstance(spec, list) or len(spec) != 2 or spec[1] is None:
            report.failed(where, "missing from model_index.json")
            continue
        sub = folder / component
        if not sub.is_dir():
            report.failed(where + "/", f"folder missing ({spec[0]}.{spec[1]})")
            continue
        if component == "scheduler":
            _check_configs(sub, where, ("scheduler_config.json",), report)
        elif component == "tokenizer":
            _check_configs(sub, where, ("tokenizer_config.json", "tokenizer.json"), report)
            processor = [f for f in _PROCESSOR_CONFIGS if (sub / f).is_file()]
            if processor:
                _check_configs(sub, where, (processor[0],), report)
            else:
                report.failed(where + "/", "no processor_config.json or preprocessor_config.json")
        else:
            if _check_configs(sub, where, ("config.json",), report):
                _check_weights(sub, where, report)


def _check_configs(folder: Path, where: str, names: tuple[str, ...], report: VerifyReport) -> bool:
    ok = True
    for name in names:
        data = _read_json(folder / name, f"{where}/{name}", report)
        if data is None:
            ok = False
        else:
            report.passed(f"{where}/{name}", "readable")
    return ok


def _check_weights(folder: Path, where: str, report: VerifyReport) -> None:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        report.failed(where + "/", "more than one *.safetensors.index.json")
        return
    if indexes:
        _check_sharded(indexes[0], where, report)
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        report.failed(where + "/", "no *.safetensors weights")
    for file in files:
        _check_safetensors(file, f"{where}/{file.name}", report)


def _check_sharded(index_path: Path, where: str, report: VerifyReport) -> None:
    label = f"{where}/{index_path.name}"
    index = _read_json(index_path, label, report)
    if index is None:
        return
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        report.failed(label, "no weight_map")
        return
    by_shard: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(str(shard), set()).add(str(tensor))
    report.passed(label, f"{len(weight_map)} tensors in {len(by_shard)} shards")
    for shard, tensors in sorted(by_shard.items()):
        names = _check_safetensors(index_path.parent / shard, f"{where}/{shard}", report)
        if names is not None and not tensors <= names:
            missing = sorted(tensors - names)
            report.failed(
                f"{where}/{shard}",
                f"{len(missing)} tensors listed in the index are not in the shard "
                f"(first: {missing[0]})",
            )


def _check_safetensors(path: Path, label: str, report: VerifyReport) -> set[str] | None:
    """Parse the header and check the file size; returns the tensor names when readable."""
    try:
        header, size = read_safetensors_header(path)
    except FileNotFoundError:
        report.failed(label, "missing")
        return None
    except (OSError, ValueError) as error:
        report.failed(label, f"unreadable safetensors header: {error}")
        return None
    report.passed(label, f"{len(header)} tensors, {_human(size)}")
    return set(header)


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The tensor entries of a safetensors header (``__metadata__`` left out) and the file size.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the header is malformed or the file is truncated or too long.
    """
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(0)
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"file is only {size} bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length == 0 or length > _MAX_HEADER_BYTES or 8 + length > size:
            raise ValueError(f"header length {length} does not fit a {size}-byte file")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise ValueError(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    expected = 8 + length + end
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(f"{state}: {size} bytes, header says {expected}")
    return header, size


def _check_against_manifest(
    folder: Path, prefix: str, entry: ManifestEntry, report: VerifyReport, check_sha256: bool
) -> None:
    if entry.files:
        for file in entry.files:
            _check_file(folder / file.path, prefix + file.path, file, report, check_sha256)
    else:
        report.warnings.append(
            f"the manifest lists no per-file sizes or sha256 for {entry.repo_id} yet: "
            "structure and approximate sizes only"
        )
    if not entry.revision_pinned:
        report.warnings.append(
            f"{entry.repo_id} revision {entry.revision!r} is not pinned to a commit sha"
        )
    for component, approx in entry.approx_component_bytes.items():
        actual = sum(f.stat().st_size for f in (folder / component).glob("*.safetensors"))
        if actual and abs(actual - approx) > APPROX_SIZE_TOLERANCE * approx:
            report.warnings.append(
                f"{prefix}{component}/ holds {_human(actual)} of safetensors, "
                f"expected about {_human(approx)}"
            )


def _check_lora(
    path: Path, label: str, entry: ManifestEntry, report: VerifyReport, check_sha256: bool
) -> None:
    if not path.is_file():
        report.warnings.append(f"optional LoRA {entry.repo_id} not found at {path}")
        return
    _check_safetensors(path, label, report)
    for file in entry.files:
        if file.path == entry.weight_file:
            _check_file(path, label, file, report, check_sha256)


def _check_file(
    path: Path, label: str, entry: FileEntry, report: VerifyReport, check_sha256: bool
) -> None:
    if not path.is_file():
        report.failed(label, "missing (listed in the manifest)")
        return
    size = path.stat().st_size
    if size != entry.size:
        report.failed(label, f"size {size} bytes, manifest says {entry.size}")
        return
    if entry.sha256 and check_sha256:
        digest = _sha256(path)
        if digest != entry.sha256:
            report.failed(label, f"sha256 {digest}, manifest says {entry.sha256}")
            return
        report.passed(label, "size and sha256 match the manifest")
    else:
        report.passed(label, "size matches the manifest")


def _is_entry(folder: Path, entry: ManifestEntry) -> bool:
    """Whether ``folder`` holds the checkpoint ``entry`` describes (per its ``identify`` map)."""
    if not entry.identify:
        return False
    for name, expected in entry.identify.items():
        try:
            data = json.loads((folder / name).read_text("utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(data, Mapping) or any(data.get(k) != v for k, v in expected.items()):
            return False
    return True


def _read_json(path: Path, label: str, report: VerifyReport) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        report.failed(label, "missing")
        return None
    except (OSError, ValueError) as error:
        report.failed(label, f"unreadable JSON: {error}")
        return None
    if not isinstance(data, dict):
        report.failed(label, "not a JSON object")
        return None
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(16 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{size} B"
