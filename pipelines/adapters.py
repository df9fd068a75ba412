"""LoRA adapters on the FLUX.2 transformer: checking files, an LRU on the device, activation.

Everything goes through diffusers' own LoRA code, so a file is accepted exactly when diffusers'
FLUX.2 loader can apply it: :meth:`Flux2Pipeline.lora_state_dict` converts the formats it knows
(diffusers/PEFT, kohya ``lora_down``/``lora_up``, ai-toolkit ``diffusion_model.``) to diffusers
keys, and :meth:`Flux2Pipeline.load_lora_into_transformer` loads the result as a named PEFT
adapter, with the LoRA metadata (rank, alpha) the file carries. Files are read with
``safetensors`` only: nothing is ever unpickled, whatever the file is called.

:func:`read_lora` is the check: a file whose converted keys are not LoRA pairs for linear layers
of *this* transformer, with matching shapes, raises :class:`~core.errors.InvalidRequest` with
what is wrong. It reads only the file and a table of the transformer's linear shapes taken at
load time, so it is safe to call from another thread while the engine runs.

:class:`AdapterCache` keeps loaded adapters on the transformer's device, least recently used
first out, bounded in bytes (the LoRA tensors at the engine's dtype). Adapters named in
``pinned`` (the Turbo LoRA kept unfused) never count and are never evicted. :meth:`activate`
makes exactly a batch's adapters active with its scales (``set_adapters``), or turns LoRA off
(``disable_lora``) when it has none: a disabled PEFT layer returns its base layer's output
unchanged, so a batch without adapters computes what the plain model computes, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import GenerationFailed, InvalidRequest, WeightsError
from pipelines.prompt_cache import CacheStats
from pipelines.types import LoraWeights
from weights.loras import read_safetensors_header

logger = logging.getLogger(__name__)

#: diffusers' safetensors metadata key for a LoRA's PEFT config (``LORA_ADAPTER_METADATA_KEY``).
METADATA_KEY = "lora_adapter_metadata"
_LORA_KEY = re.compile(r"transformer\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
_SHOWN = 3  # offending keys named in an error message


@dataclass(frozen=True)
class LoraFile:
    """A LoRA read and checked for one transformer: diffusers-format tensors (on the CPU) and
    the PEFT metadata the file carried (None: diffusers derives rank and alpha from shapes)."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] | None
    rank: int
    modules: int

    def nbytes(self, dtype: torch.dtype) -> int:
        """Bytes the adapter takes once loaded at ``dtype``."""
        return sum(int(t.numel()) * dtype.itemsize for t in self.state_dict.values())


def linear_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{module name: (out_features, in_features)}`` of the transformer's linear layers (before
    any adapter wraps them)."""
    return {
        name: (module.out_features, module.in_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def read_lora(
    path: Path, shapes: dict[str, tuple[int, int]], *, pipeline_class: Any = None
) -> LoraFile:
    """Read ``path`` as a LoRA for the transformer whose linear layers have ``shapes``.

    Raises:
        InvalidRequest: not a safetensors file, unreadable, a format diffusers' FLUX.2 loader
            does not take, or keys and shapes for another model (the message says which).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if pipeline_class is None:
        from diffusers import Flux2Pipeline

        pipeline_class = Flux2Pipeline
    path = Path(path)
    try:
        header = read_safetensors_header(path)
    except WeightsError as error:
        raise _invalid(f"the LoRA file is not a safetensors file ({error.message})") from error
    try:
        tensors = load_file(str(path), device="cpu")
    except (OSError, SafetensorError, ValueError) as error:
        raise _invalid(f"the LoRA file cannot be read as safetensors: {error}") from error
    if not tensors:
        raise _invalid("the LoRA file holds no tensors")
    metadata = _metadata(header)
    try:
        state = pipeline_class.lora_state_dict(tensors)
    except Exception as error:  # diffusers' converters raise many kinds for foreign layouts
        raise _invalid(
            f"diffusers' FLUX.2 LoRA loader does not accept this file's keys ({error}); "
            f"first keys: {_first(tensors)}"
        ) from error
    return _checked(state, metadata, shapes)


def _checked(
    state: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None,
    shapes: dict[str, tuple[int, int]],
) -> LoraFile:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for key, tensor in state.items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            foreign.append(key)
            continue
        pairs.setdefault(match["module"], {})[match["part"]] = tensor
    if foreign:
        raise _invalid(
            f"{len(foreign)} keys are not LoRA weights for the FLUX.2 transformer (only "
            f"lora_A/lora_B or lora_down/lora_up pairs are applied), e.g. {_first(foreign)}"
        )
    unknown = sorted(module for module in pairs if module not in shapes)
    if unknown:
        raise _invalid(
            f"the LoRA targets {len(unknown)} layers this FLUX.2 transformer does not have (a "
            f"LoRA for another model?), e.g. {_first(unknown)}"
        )
    ranks = set()
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise _invalid(f"layer {module} has lora_{''.join(parts)} without its pair")
        down, up = parts["A"], parts["B"]
        out_features, in_features = shapes[module]
        if (
            down.ndim != 2
            or up.ndim != 2
            or down.shape[1] != in_features
            or up.shape[0] != out_features
            or up.shape[1] != down.shape[0]
        ):
            raise _invalid(
                f"layer {module} is {out_features}x{in_features} here but the LoRA has "
                f"lora_A {list(down.shape)} and lora_B {list(up.shape)} (a LoRA for another "
                "model size?)"
            )
        ranks.add(int(down.shape[0]))
    if not pairs:
        raise _invalid("the LoRA file holds no LoRA weights")
    return LoraFile(state, metadata, max(ranks), len(pairs))


def _metadata(header: dict[str, object]) -> dict[str, Any] | None:
    """diffusers' LoRA metadata (a PEFT ``LoraConfig``), as ``load_lora_weights`` reads it."""
    extra = header.get("__metadata__")
    raw = extra.get(METADATA_KEY) if isinstance(extra, dict) else None
    if not raw:
        return None
    try:
        value = json.loads(str(raw))
    except ValueError as error:
        raise _invalid(f"the LoRA file's {METADATA_KEY} metadata is not JSON: {error}") from error
    if not isinstance(value, dict):
        raise _invalid(f"the LoRA file's {METADATA_KEY} metadata is not a JSON object")
    return value


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """PEFT warns when a second adapter joins a model and when the active one is deleted: both
    are this cache's design (activation is always set explicitly afterwards)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"peft(\..*)?")
        yield


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, type="value_error")


def _first(keys: Collection[str]) -> str:
    shown = list(keys)[:_SHOWN]
    return ", ".join(shown) + (", ..." if len(keys) > _SHOWN else "")


class AdapterCache:
    """Named LoRA adapters loaded on a pipeline's transformer, LRU-bounded in bytes.

    Used from the engine's thread only (``check`` excepted: it only reads files).
    """

    def __init__(
        self,
        pipe: Any,
        max_bytes: int,
        dtype: torch.dtype,
        shapes: dict[str, tuple[int, int]],
        pinned: Collection[str] = (),
    ) -> None:
        self.pipe = pipe
        self.max_bytes = max_bytes
        self.dtype = dtype
        self.shapes = shapes
        self.pinned = frozenset(pinned)
        self._loaded: OrderedDict[str, int] = OrderedDict()
        self._checked: set[str] = set()  # names whose files passed read_lora
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()
        self._active: tuple[tuple[str, float], ...] | None = None

    # -- checking (any thread) -------------------------------------------------------------

    def check(self, lora: LoraWeights) -> None:
        """Raise :class:`InvalidRequest` when ``lora`` cannot be applied (see :func:`read_lora`);
        a file that passed once (same name, i.e. same bytes) is not read again."""
        with self._lock:
            if lora.name in self._checked:
                return
        read_lora(lora.path, self.shapes, pipeline_class=type(self.pipe))
        with self._lock:
            self._checked.add(lora.name)

    # -- loading and activation (the engine's thread) ----------------------------------------

    def load_pinned(self, name: str, path: Path) -> None:
        """Load the adapter at ``path`` as ``name`` for good (one of ``pinned``), inactive.

        Raises:
            InvalidRequest: the file cannot be applied to this transformer.
            GenerationFailed: diffusers failed to load it.
        """
        loaded = read_lora(path, self.shapes, pipeline_class=type(self.pipe))
        try:
            with _quiet_peft():
                self._load(name, loaded)
        except Exception as error:
            self._forget(name)
            raise GenerationFailed(f"cannot load LoRA {path.name}: {error}") from error
        self._active = None
        self.activate((), ())

    def activate(self, adapters: Sequence[tuple[str, float]], loras: Sequence[LoraWeights]) -> None:
        """Make exactly ``adapters`` (pinned ones, with their scales) and ``loras`` active.

        Raises:
            InvalidRequest: a LoRA file cannot be applied (nothing stays half-loaded).
            GenerationFailed: diffusers failed to load or switch adapters.
        """
        wanted = {lora.name for lora in loras}
        for lora in loras:
            self._ensure(lora, keep=wanted)
        active = (*adapters, *((lora.name, lora.scale) for lora in loras))
        if active == self._active:
            return
        try:
            if active:
                self.pipe.enable_lora()
                self.pipe.set_adapters([name for name, _ in active], [w for _, w in active])
            elif self._has_adapters():
                self.pipe.disable_lora()
        except Exception as error:
            self._active = None
            raise GenerationFailed(f"cannot switch LoRA adapters: {error}") from error
        self._active = active

    def trim(self) -> None:
        """Evict least recently used adapters until the cache is within ``max_bytes``."""
        while self._loaded and sum(self._loaded.values()) > self.max_bytes:
            name = next(iter(self._loaded))
            self._evict(name)

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                len(self._loaded),
                sum(self._loaded.values()),
                self.max_bytes,
            )

    def _ensure(self, lora: LoraWeights, keep: set[str]) -> None:
        if lora.name in self._loaded:
            self._loaded.move_to_end(lora.name)
            with self._lock:
                self._hits += 1
            return
        with self._lock:
            self._misses += 1
        loaded = read_lora(lora.path, self.shapes, pipeline_class=type(self.pipe))
        size = loaded.nbytes(self.dtype)
        for name in list(self._loaded):  # make room, never evicting this batch's adapters
            if sum(self._loaded.values()) + size <= self.max_bytes:
                break
            if name not in keep:
                self._evict(name)
        try:
            with _quiet_peft():
                self._load(lora.name, loaded)
        except Exception as error:
            self._forget(lora.name)
            raise GenerationFailed(f"cannot load LoRA {lora.path.name}: {error}") from error
        self._active = None  # loading makes the new adapter the active one
        self._loaded[lora.name] = size
        with self._lock:
            self._checked.add(lora.name)
        logger.info(
            "loaded LoRA %s (rank %d, %d layers, %.1f MB)",
            lora.name[:12],
            loaded.rank,
            loaded.modules,
            size / 1e6,
        )

    def _load(self, name: str, loaded: LoraFile) -> None:
        self.pipe.load_lora_into_transformer(
            loaded.state_dict,
            transformer=self.pipe.transformer,
            adapter_name=name,
            metadata=loaded.metadata,
            _pipeline=self.pipe,
        )

    def _evict(self, name: str) -> None:
        self._loaded.pop(name, None)
        self._forget(name)
        logger.info("evicted LoRA %s", name[:12])

    def _forget(self, name: str) -> None:
        """Delete adapter ``name`` from the transformer if any of it is there."""
        self._active = None
        if name in self._adapter_names():
            with _quiet_peft():
                self.pipe.delete_adapters(name)

    def _adapter_names(self) -> set[str]:
        listed = self.pipe.get_list_adapters()
        return {name for names in listed.values() for name in names}

    def _has_adapters(self) -> bool:
        return bool(self._adapter_names())


__all__ = ["AdapterCache", "LoraFile", "linear_shapes", "read_lora"]
