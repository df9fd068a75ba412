"""Build small random LoRAs for a FLUX.2 checkpoint, fully offline (tests and benchmarks).

A LoRA here is a safetensors file in the layout diffusers itself writes
(``Flux2Pipeline.save_lora_weights``): ``transformer.<module>.lora_A.weight`` (``[rank, in]``)
and ``transformer.<module>.lora_B.weight`` (``[out, rank]``) for each targeted linear layer.
Shapes are read from the checkpoint's own transformer weights (their safetensors headers, no
tensors are loaded), so the same builder serves the tiny checkpoint and a real one.

:func:`build_tiny_turbo_lora` writes a stand-in for fal's Turbo LoRA where ``flux2-edit weights
download`` puts the real one (beside the pipeline folder), so the tiny checkpoint can exercise
the turbo regime's adapter path. Its output is as random as the checkpoint's.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from core.errors import WeightsError
from weights.manifest import Manifest, load_manifest

#: The linear layers of the transformer blocks (attention and feed-forward, both streams).
BLOCK_LINEARS = (r"(transformer_blocks|single_transformer_blocks)\.\d+\.(attn|ff|ff_context)\..+",)
#: Attention projections only (a narrower LoRA, as many published style LoRAs are).
ATTENTION_LINEARS = (r"(transformer_blocks|single_transformer_blocks)\.\d+\.attn\..+",)
_HEADER_LIMIT = 100 * 1024 * 1024


def transformer_linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """``{module name: (out, in)}`` for every 2-D ``.weight`` of the checkpoint's transformer."""
    folder = Path(model_dir) / "transformer"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder} holds no safetensors weights")
    shapes: dict[str, tuple[int, int]] = {}
    for file in files:
        for name, entry in read_safetensors_header(file).items():
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if name.endswith(".weight") and isinstance(shape, list) and len(shape) == 2:
                shapes[name.removesuffix(".weight")] = (int(shape[0]), int(shape[1]))
    return shapes


def read_safetensors_header(path: Path) -> dict[str, object]:
    """The JSON header of a safetensors file (names, dtypes, shapes), without its tensors.

    Raises:
        WeightsError: the file is not a safetensors file.
    """
    try:
        with Path(path).open("rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= _HEADER_LIMIT:
                raise ValueError(f"header length {length} is not plausible")
            raw = handle.read(length)
            if len(raw) != length:
                raise ValueError("truncated header")
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path} is not a safetensors file: {error}") from error
    return header


def build_lora(
    model_dir: Path,
    dest: Path,
    *,
    rank: int = 4,
    seed: int = 0,
    strength: float = 0.5,
    targets: Sequence[str] = BLOCK_LINEARS,
    prefix: str = "transformer.",
) -> Path:
    """Write a random LoRA for the checkpoint at ``model_dir`` to ``dest`` (a safetensors file).

    ``lora_A`` is drawn with unit variance over ``in`` (so ``A x`` keeps the scale of ``x``) and
    ``lora_B`` with standard deviation ``strength / rank``; a delta of that size changes the tiny
    model's output visibly without overflowing it. ``targets`` are regular expressions matched
    in full against module names; ``prefix`` is the key prefix (``transformer.`` as diffusers
    writes it; ``diffusion_model.`` gives the ai-toolkit form diffusers converts).

    Raises:
        WeightsError: no linear layer matches ``targets``.
    """
    import torch
    from safetensors.torch import save_file

    shapes = transformer_linear_shapes(model_dir)
    chosen = sorted(
        name for name in shapes if any(re.fullmatch(pattern, name) for pattern in targets)
    )
    if not chosen:
        raise WeightsError(f"no linear layer of {model_dir} matches {list(targets)}")
    generator = torch.Generator("cpu").manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name in chosen:
        out_features, in_features = shapes[name]
        down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        up = torch.randn(out_features, rank, generator=generator) * (strength / rank)
        tensors[f"{prefix}{name}.lora_A.weight"] = down.contiguous()
        tensors[f"{prefix}{name}.lora_B.weight"] = up.contiguous()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest), metadata={"format": "pt"})
    return dest


def build_tiny_turbo_lora(model_dir: Path, manifest: Manifest | None = None) -> Path:
    """A random stand-in for the Turbo LoRA, where ``weights download`` puts the real one
    (``<model_dir>/../FLUX.2-dev-Turbo/flux.2-turbo-lora.safetensors``)."""
    manifest = manifest or load_manifest()
    dest = manifest.lora_file(Path(model_dir).parent)
    return build_lora(model_dir, dest, rank=4, seed=8, strength=0.5)


__all__ = [
    "ATTENTION_LINEARS",
    "BLOCK_LINEARS",
    "build_lora",
    "build_tiny_turbo_lora",
    "read_safetensors_header",
    "transformer_linear_shapes",
]
