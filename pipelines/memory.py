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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path

from core.errors import ConfigError, WeightsError
from pipelines.layout import ParallelLayout
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
#: Share of FLUX.2 [dev]'s transformer that diffusers' ``_tp_plan`` splits (62.81 of 64.45 GB,
#: counted on a meta-device model); used when a checkpoint was not measured with the plan.
TP_SHARDED_FRACTION = 0.9747

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
    #: The transformer weights tensor parallelism splits (the rest is replicated on every rank).
    transformer_tp_sharded: int | None = None

    @property
    def total(self) -> int:
        return self.transformer + self.text_encoder + self.vae


#: FLUX.2 [dev] in bf16, for planning without the checkpoint (docs, tables): the transformer,
#: its fp8 size and its tensor-parallel share counted on a meta-device model with the real
#: configuration; the text encoder (24.01 B parameters; 17.9 B encode-only) and the VAE (84.0 M)
#: from ``docs/reference/flux2-diffusers.md`` §2.8 and §4.
FLUX2_DEV = ComponentSizes(
    transformer=64_446_562_304,
    text_encoder=48_020_000_000,
    vae=168_000_000,
    transformer_fp8=32_239_985_152,
    text_encoder_encode_only=35_800_000_000,
    transformer_tp_sharded=62_813_896_704,
)


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


# -- a parallel group ---------------------------------------------------------------------------

#: Where the weights of a parallel group can live: the transformer (or each rank's share of it)
#: always on every rank's GPU; the text encoder on rank 0's GPU (``resident``) or its CPU
#: (``offload_text_encoder``); the VAE on rank 0's GPU. Rank 0 alone encodes prompts and
#: references and decodes, and broadcasts what the other ranks need (embeddings, latents, ids).
GROUP_PROFILES = (MemoryProfile.RESIDENT, MemoryProfile.OFFLOAD_TEXT_ENCODER)


@dataclass(frozen=True)
class RankNeed:
    """The GPU bytes one rank of a group needs, and what they are for."""

    rank: int
    transformer: int
    text_encoder: int
    vae: int
    headroom: int

    @property
    def total(self) -> int:
        return self.transformer + self.text_encoder + self.vae + self.headroom

    def describe(self) -> str:
        parts = [f"transformer {_gb(self.transformer)}"]
        if self.text_encoder:
            parts.append(f"text encoder {_gb(self.text_encoder)}")
        if self.vae:
            parts.append(f"VAE {_gb(self.vae)}")
        parts.append(f"headroom {_gb(self.headroom)}")
        return f"rank {self.rank} needs ~{_gb(self.total)} ({', '.join(parts)})"


@dataclass(frozen=True)
class GroupPlan:
    """Where a parallel group keeps its weights, and each rank's GPU need (``ranks``)."""

    layout: ParallelLayout
    profile: MemoryProfile
    ranks: tuple[RankNeed, ...]
    reason: str
    fits: bool = True
    gpu_bytes: tuple[int, ...] | None = None

    def lines(self) -> list[str]:
        """One log line per rank, with its GPU's free memory when known."""
        free = self.gpu_bytes or ()
        return [
            need.describe() + (f" of {_gb(free[need.rank])} free" if need.rank < len(free) else "")
            for need in self.ranks
        ]


def transformer_share(
    sizes: ComponentSizes, layout: ParallelLayout | None, *, fp8: bool = False
) -> int:
    """Transformer bytes one rank holds: all of it, or with tensor parallelism its 1/N share of
    the split weights plus the replicated rest (modulation, embedders, norms, output layer)."""
    full = sizes.transformer
    if fp8:
        full = sizes.transformer_fp8 if sizes.transformer_fp8 is not None else full // 2
    if layout is None or not layout.divides_weights:
        return full
    sharded = sizes.transformer_tp_sharded
    if sharded is None:  # not measured: FLUX.2 [dev] splits 97.5 % of its transformer
        sharded = round(TP_SHARDED_FRACTION * full)
    return full - sharded + -(-sharded // layout.degree)


def rank_needs(
    profile: MemoryProfile,
    sizes: ComponentSizes,
    layout: ParallelLayout,
    *,
    fp8: bool = False,
    encode_only_text_encoder: bool = False,
    headroom: int | None = None,
    extra_bytes: int = 0,
) -> tuple[RankNeed, ...]:
    """Each rank's GPU need under ``profile`` (``resident`` or ``offload_text_encoder``).

    Activations are split between the ranks too (tokens with Ulysses, heads and MLP columns with
    tensor parallelism), so each rank keeps 1/N of the one-GPU headroom, at least 1 GiB (an
    estimate, like the headroom itself). Rank 0 also holds the VAE, the prompt cache
    (``extra_bytes``) and, when resident, the text encoder.
    """
    share = transformer_share(sizes, layout, fp8=fp8)
    room = headroom if headroom is not None else activation_headroom(sizes)
    room = max(MIN_HEADROOM, -(-room // layout.degree))
    text_encoder = sizes.text_encoder
    if encode_only_text_encoder and sizes.text_encoder_encode_only is not None:
        text_encoder = sizes.text_encoder_encode_only
    if profile is not MemoryProfile.RESIDENT:
        text_encoder = 0
    first = RankNeed(0, share, text_encoder, sizes.vae, room + extra_bytes)
    return (first, *(RankNeed(rank, share, 0, 0, room) for rank in range(1, layout.degree)))


def plan_group(
    gpu_bytes: Sequence[int] | None,
    sizes: ComponentSizes,
    layout: ParallelLayout,
    *,
    override: MemoryProfile | str | None = None,
    fp8: bool = False,
    encode_only_text_encoder: bool = False,
    headroom: int | None = None,
    extra_bytes: int = 0,
) -> GroupPlan:
    """Pick where a group's text encoder lives, from each rank's free GPU memory.

    ``gpu_bytes`` lists the free bytes of each rank's GPU (``None``: the group runs on the CPU).
    ``resident`` when every rank fits with the text encoder on rank 0's GPU, else
    ``offload_text_encoder``; when even that does not fit, it still applies with ``fits=False``.

    Raises:
        ConfigError: ``override`` is a profile a group cannot use (``model_offload``; ``cpu``
            with GPUs, or a GPU profile without them), or ``gpu_bytes`` has the wrong length.
    """
    if isinstance(override, str):
        override = parse_profile(override)
    needs_of = partial(
        rank_needs,
        sizes=sizes,
        layout=layout,
        fp8=fp8,
        encode_only_text_encoder=encode_only_text_encoder,
        headroom=headroom,
        extra_bytes=extra_bytes,
    )
    if gpu_bytes is None:
        if override not in (None, MemoryProfile.CPU):
            raise ConfigError(
                f"memory_profile {override.value!r} places weights on GPUs, but the group runs on "
                "the CPU: use memory_profile=auto or cpu"
            )
        cpu = tuple(RankNeed(rank, 0, 0, 0, 0) for rank in range(layout.degree))
        return GroupPlan(layout, MemoryProfile.CPU, cpu, "no GPU: every rank on the CPU")
    free = tuple(gpu_bytes)
    if len(free) != layout.degree:
        raise ConfigError(f"{layout} needs {layout.degree} GPUs, got {len(free)}")
    if override is not None and override not in GROUP_PROFILES:
        raise ConfigError(
            f"memory_profile {override.value!r} cannot be used with parallel={layout}: use auto, "
            f"{' or '.join(p.value for p in GROUP_PROFILES)} (every rank keeps its transformer "
            "share on its GPU)"
        )

    def fitting(profile: MemoryProfile) -> tuple[tuple[RankNeed, ...], bool]:
        ranks = needs_of(profile)
        return ranks, all(need.total <= room for need, room in zip(ranks, free, strict=True))

    if override is not None:
        ranks, fits = fitting(override)
        reason = f"set by memory_profile ({override.value})"
        if not fits:
            reason += ": does not fit; expect out-of-memory errors"
        return GroupPlan(layout, override, ranks, reason, fits, free)
    for profile in GROUP_PROFILES:
        ranks, fits = fitting(profile)
        if fits:
            where = "rank 0's GPU" if profile is MemoryProfile.RESIDENT else "rank 0's CPU"
            return GroupPlan(layout, profile, ranks, f"text encoder on {where}", True, free)
    last = GROUP_PROFILES[-1]
    ranks, _ = fitting(last)
    return GroupPlan(
        layout,
        last,
        ranks,
        f"nothing fits: even {last.value} needs more than the free memory "
        "(more ranks, tensor parallelism or fp8 would help)",
        False,
        free,
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
    tp_patterns: Sequence[str] = (),
) -> ComponentSizes:
    """Component sizes of a diffusers FLUX.2 checkpoint, from its safetensors headers.

    Args:
        path: the checkpoint directory (``transformer/``, ``text_encoder/``, ``vae/``).
        dtype_bytes: bytes per element floating-point weights will have once loaded (2 for
            bfloat16, 4 for float32); ``None`` keeps the stored sizes.
        text_layers: decoder layers an encode-only text encoder keeps.
        tp_patterns: the module globs tensor parallelism splits (the keys of diffusers'
            ``Flux2Transformer2DModel._tp_plan``, e.g. ``transformer_blocks.*.attn.to_q``);
            their weights are ``transformer_tp_sharded``.

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
        transformer_tp_sharded=_total(_sharded(transformer, tp_patterns), dtype_bytes)
        if tp_patterns
        else None,
    )


def _sharded(entries: list[TensorEntry], patterns: Sequence[str]) -> list[TensorEntry]:
    """The weights of the modules ``patterns`` name (a ``*`` stands for one block index)."""
    globs = [re.escape(pattern).replace(r"\*", r"\d+") for pattern in patterns]
    weight = re.compile(rf"^(?:{'|'.join(globs)})\.weight$")
    return [entry for entry in entries if weight.match(entry.name)]


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
    "FLUX2_DEV",
    "PROFILE_CHOICES",
    "GROUP_PROFILES",
    "ComponentSizes",
    "GroupPlan",
    "MemoryProfile",
    "Plan",
    "RankNeed",
    "activation_headroom",
    "gpu_need",
    "measure_checkpoint",
    "parse_profile",
    "plan",
    "plan_group",
    "rank_needs",
    "transformer_share",
    "tensor_entries",
]
