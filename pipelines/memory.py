"""Where FLUX.2's weights live: component sizes from checkpoint headers, and the memory planner.

No torch here: sizes come from the safetensors headers (``weights.verify``), so a 113 GB
checkpoint is measured in milliseconds without loading a weight, and the planner is plain
arithmetic that unit tests drive with made-up GPU sizes.

**Profiles**, fastest first (:class:`MemoryProfile`):

``resident``
    Transformer, text encoder and VAE on the GPU. FLUX.2 [dev] in bf16 is 64.45 + 48.0 + 0.17
    = 112.6 GB of weights (``docs/reference/flux2-diffusers.md`` §4): an H200 (141 GB) holds it, an
    80 GB H100 does not.
``offload_text_encoder``
    Transformer and VAE on the GPU; the text encoder stays on the CPU. A prompt the embedding
    cache has not seen costs one CPU forward of the encoder over 512 tokens (~17.8 TFLOP for the
    31 layers read: roughly 10-60 s on a server CPU, an estimate; measure it), and prompt
    expansion (512 generated tokens) on the CPU is far slower; cached prompts cost nothing, and
    their embeddings are kept on the GPU. Needs about 64.6 GB + activations: the 80 GB profile.
``model_offload``
    diffusers ``enable_model_cpu_offload()``: each model is moved to the GPU when it runs and
    back when the next one starts, so the GPU holds the largest model plus the VAE. Every request
    moves the transformer over PCIe (~64 GB, seconds). CUDA only. This is also the last resort
    when nothing fits; the plan then says so (``fits=False``): a bf16 transformer alone does not
    fit a 24 GB card, which needs group offload or 4-bit weights (not implemented here).
``cpu``
    No GPU: everything on the CPU, as the tiny checkpoint runs in tests.

**Options that shrink the footprint**, and which the planner accounts for:

* ``fp8``: the transformer's linear weights in float8 (torchao, CUDA compute capability >= 8.9),
  about half its bf16 size; sized here from the headers (2-D ``*.weight`` tensors at one byte).
* an **encode-only text encoder**: the pipeline reads hidden states 10, 20 and 30, so decoder
  layers 31 and up, the ``lm_head``, the vision tower and the projector are never used when
  prompt expansion is off (§2.8: 35.8 GB instead of 48.0 GB for the real model).

**Activation headroom** (an estimate; no real-weights GPU run exists yet, §8): the HF blog reports
~62 GB peak for ``enable_model_cpu_offload`` on an H100 at 1024², i.e. the 60.0 GiB transformer
plus ~2 GiB for one image without references. Tokens grow with references (8.7k with one 1 MP
reference, 16.9k with three) and rows with the batch (up to 4 images); the widest activation is
the single-stream blocks' fused ``to_qkv_mlp_proj`` output, 55,296 features x tokens x 2 bytes,
~1 GB per row with one reference. Add the VAE decode at 1024², the CUDA context and allocator
slack, and a 4-row batch with one or two references needs roughly 8-13 GB. The default headroom
is therefore 20 % of the (unquantized) transformer's size: 12.9 GB for FLUX.2 [dev], and at
least 1 GiB (the CUDA context and the tiny checkpoint's activations at 1024²). Four rows with
four 1 MP references each can still exceed it; the engine reports that as ``OutOfMemory``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path

from core.errors import ConfigError, WeightsError
from weights.verify import read_safetensors_header

logger = logging.getLogger(__name__)

GB = 10**9
GiB = 2**30

AUTO = "auto"
#: The pipeline reads hidden states (10, 20, 30). Keeping 31 decoder layers reproduces them
#: exactly; with 30, ``hidden_states[30]`` would be the final-norm output instead (§2.8).
ENCODE_ONLY_TEXT_LAYERS = 31
ACTIVATION_FRACTION = 0.20
MIN_HEADROOM = 1 * GiB

_FLOAT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_TEXT_LAYER = re.compile(r"(?:^|\.)language_model\.(?:model\.)?layers\.(\d+)\.")


class MemoryProfile(StrEnum):
    """Where the weights live; the members are in order of speed, fastest first."""

    RESIDENT = "resident"
    OFFLOAD_TEXT_ENCODER = "offload_text_encoder"
    MODEL_OFFLOAD = "model_offload"
    CPU = "cpu"


PROFILE_CHOICES = (AUTO, *(profile.value for profile in MemoryProfile))


@dataclass(frozen=True)
class ComponentSizes:
    """Bytes of each component's weights once loaded (at the dtype it was measured for).

    ``transformer_fp8`` is the transformer with its linear weights in float8;
    ``text_encoder_encode_only`` the text encoder without the parts prompt encoding never uses.
    ``None`` means "not measured": the planner then estimates (half, and the full size).
    """

    transformer: int
    text_encoder: int
    vae: int
    transformer_fp8: int | None = None
    text_encoder_encode_only: int | None = None

    @property
    def total(self) -> int:
        return self.transformer + self.text_encoder + self.vae


@dataclass(frozen=True)
class Plan:
    """The profile to use and why.

    ``need_bytes`` is the GPU memory the profile is expected to use (weights resident at its peak
    plus the headroom); ``fits`` whether that is at most ``gpu_bytes``. A plan that does not fit
    still applies (an explicit override, or ``model_offload`` as the last resort) and is logged as
    a warning.
    """

    profile: MemoryProfile
    reason: str
    fits: bool = True
    need_bytes: int = 0
    gpu_bytes: int | None = None


def parse_profile(name: str) -> MemoryProfile | None:
    """``auto`` -> ``None``; a profile name -> the profile; anything else -> ``ConfigError``."""
    if name == AUTO:
        return None
    try:
        return MemoryProfile(name)
    except ValueError:
        raise ConfigError(
            f"unknown memory_profile {name!r}: use one of {', '.join(PROFILE_CHOICES)}"
        ) from None


def activation_headroom(sizes: ComponentSizes) -> int:
    """GPU bytes kept free for activations: 20 % of the transformer, at least 1 GiB."""
    return max(MIN_HEADROOM, round(ACTIVATION_FRACTION * sizes.transformer))


def gpu_need(
    profile: MemoryProfile,
    sizes: ComponentSizes,
    *,
    fp8: bool = False,
    encode_only_text_encoder: bool = False,
    headroom: int | None = None,
    extra_bytes: int = 0,
) -> int:
    """GPU bytes ``profile`` needs: weights on the GPU at its peak + headroom + ``extra_bytes``.

    ``extra_bytes`` is memory the engine keeps on the GPU besides weights and activations (the
    prompt-embedding cache).
    """
    if profile is MemoryProfile.CPU:
        return 0
    transformer = sizes.transformer
    if fp8:
        transformer = (
            sizes.transformer_fp8 if sizes.transformer_fp8 is not None else transformer // 2
        )
    text_encoder = sizes.text_encoder
    if encode_only_text_encoder and sizes.text_encoder_encode_only is not None:
        text_encoder = sizes.text_encoder_encode_only
    if profile is MemoryProfile.RESIDENT:
        weights = transformer + text_encoder + sizes.vae
    elif profile is MemoryProfile.OFFLOAD_TEXT_ENCODER:
        weights = transformer + sizes.vae
    else:  # model offload: one model at a time, the small VAE may stay while the encoder runs
        weights = max(transformer, text_encoder) + sizes.vae
    if headroom is None:
        headroom = activation_headroom(sizes)
    return weights + headroom + extra_bytes


def plan(
    gpu_bytes: int | None,
    sizes: ComponentSizes,
    *,
    override: MemoryProfile | str | None = None,
    fp8: bool = False,
    encode_only_text_encoder: bool = False,
    headroom: int | None = None,
    extra_bytes: int = 0,
) -> Plan:
    """Pick the fastest profile whose GPU need fits ``gpu_bytes`` (``None``: no GPU -> ``cpu``).

    ``override`` (a profile or its name; ``None``/``"auto"`` plans automatically) is applied even
    when it does not fit: the plan then has ``fits=False`` and the caller logs a warning. With a
    GPU, ``cpu`` is never chosen automatically: when nothing fits, ``model_offload`` is the last
    resort, again with ``fits=False``.

    Raises:
        ConfigError: ``override`` names no profile, or asks for a GPU profile without a GPU (or
            for ``cpu`` with one).
    """
    if isinstance(override, str):
        override = parse_profile(override)
    need_of = partial(
        gpu_need,
        sizes=sizes,
        fp8=fp8,
        encode_only_text_encoder=encode_only_text_encoder,
        headroom=headroom,
        extra_bytes=extra_bytes,
    )
    if gpu_bytes is None:
        if override is not None and override is not MemoryProfile.CPU:
            raise ConfigError(
                f"memory_profile {override.value!r} places weights on a GPU, but this engine runs "
                "on the CPU: use memory_profile=auto or cpu (or a CUDA device)"
            )
        return Plan(MemoryProfile.CPU, "no GPU: everything on the CPU")
    if override is MemoryProfile.CPU:
        raise ConfigError(
            "memory_profile 'cpu' with a CUDA device: set device=cpu to run on the CPU"
        )
    if override is not None:
        need = need_of(override)
        fits = need <= gpu_bytes
        reason = f"set by memory_profile: needs ~{_gb(need)} of {_gb(gpu_bytes)}"
        if not fits:
            reason += " (does not fit; expect out-of-memory errors)"
        return Plan(override, reason, fits, need, gpu_bytes)
    gpu_profiles = [p for p in MemoryProfile if p is not MemoryProfile.CPU]
    needs: dict[MemoryProfile, int] = {p: need_of(p) for p in gpu_profiles}
    for profile in gpu_profiles:
        if needs[profile] <= gpu_bytes:
            skipped = [
                f"{p.value} needs ~{_gb(needs[p])}"
                for p in gpu_profiles[: gpu_profiles.index(profile)]
            ]
            reason = f"needs ~{_gb(needs[profile])} of {_gb(gpu_bytes)}"
            if skipped:
                reason += f" ({'; '.join(skipped)})"
            return Plan(profile, reason, True, needs[profile], gpu_bytes)
    last = MemoryProfile.MODEL_OFFLOAD
    return Plan(
        last,
        f"nothing fits {_gb(gpu_bytes)}: even {last.value} needs ~{_gb(needs[last])} "
        "(smaller GPUs need fp8, 4-bit weights or group offload)",
        False,
        needs[last],
        gpu_bytes,
    )


# -- sizes from checkpoint headers ------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file, as its header describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def bytes_as(self, dtype_bytes: int | None) -> int:
        """Its size once floating-point tensors are cast to ``dtype_bytes`` per element."""
        if dtype_bytes is None or self.dtype not in _FLOAT_BYTES:
            return self.nbytes
        return self.numel * dtype_bytes


def tensor_entries(path: Path) -> list[TensorEntry]:
    """The tensors a safetensors file's header lists (no tensor data is read).

    Raises:
        WeightsError: the file is missing, truncated or its header is malformed.
    """
    try:
        header, _ = read_safetensors_header(path)
        return [
            TensorEntry(name, info["dtype"], tuple(info["shape"]), end - begin)
            for name, info in header.items()
            for begin, end in [info["data_offsets"]]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read the safetensors header of {path}: {exc}") from exc


def component_tensors(folder: Path) -> list[TensorEntry]:
    """Every tensor of every ``*.safetensors`` file in a component folder (shards included)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder} holds no .safetensors files: cannot size it")
    return [entry for file in files for entry in tensor_entries(file)]


def measure_checkpoint(
    path: Path,
    *,
    dtype_bytes: int | None = None,
    text_layers: int = ENCODE_ONLY_TEXT_LAYERS,
) -> ComponentSizes:
    """Component sizes of a diffusers FLUX.2 checkpoint, from its safetensors headers.

    Args:
        path: the checkpoint directory (``transformer/``, ``text_encoder/``, ``vae/``).
        dtype_bytes: bytes per element floating-point weights will have once loaded (2 for
            bfloat16, 4 for float32); ``None`` keeps the stored sizes.
        text_layers: decoder layers an encode-only text encoder keeps.

    Raises:
        WeightsError: a component folder has no safetensors file or an unreadable header.
    """
    path = Path(path)
    transformer = component_tensors(path / "transformer")
    text_encoder = component_tensors(path / "text_encoder")
    vae = component_tensors(path / "vae")
    return ComponentSizes(
        transformer=_total(transformer, dtype_bytes),
        text_encoder=_total(text_encoder, dtype_bytes),
        vae=_total(vae, dtype_bytes),
        transformer_fp8=_fp8_total(transformer, dtype_bytes),
        text_encoder_encode_only=_total(
            (e for e in text_encoder if _used_by_encoding(e.name, text_layers)), dtype_bytes
        ),
    )


def _total(entries: Iterable[TensorEntry], dtype_bytes: int | None) -> int:
    return sum(entry.bytes_as(dtype_bytes) for entry in entries)


def _fp8_total(entries: list[TensorEntry], dtype_bytes: int | None) -> int:
    """2-D ``*.weight`` tensors (the linear layers torchao quantizes) at one byte per element,
    plus one float32 scale per output row; everything else as loaded."""
    total = 0
    for entry in entries:
        if len(entry.shape) == 2 and entry.name.endswith(".weight") and entry.dtype in _FLOAT_BYTES:
            total += entry.numel + 4 * entry.shape[0]
        else:
            total += entry.bytes_as(dtype_bytes)
    return total


def _used_by_encoding(name: str, text_layers: int) -> bool:
    """Whether prompt encoding reads this text-encoder tensor (language model, first layers)."""
    if "language_model" not in name or "lm_head" in name:
        return False
    layer = _TEXT_LAYER.search(name)
    return layer is None or int(layer.group(1)) < text_layers


def _gb(count: int) -> str:
    return f"{count / GB:.1f} GB"


__all__ = [
    "ENCODE_ONLY_TEXT_LAYERS",
    "PROFILE_CHOICES",
    "ComponentSizes",
    "MemoryProfile",
    "Plan",
    "activation_headroom",
    "gpu_need",
    "measure_checkpoint",
    "parse_profile",
    "plan",
    "tensor_entries",
]
