"""How one request is split over several processes: the parallel layout, in plain Python.

``ulysses:N``
    Ulysses sequence (context) parallelism: every rank holds the whole transformer and a 1/N
    slice of the tokens; an all-to-all before and after each attention swaps the token split for
    a head split. Numerically exact; divides the activations, not the weights.
``tp:N``
    Tensor parallelism: the attention heads and the MLP columns are split, so every rank holds
    about 1/N of the transformer's weights; each block ends with an all-reduce.

Both come from diffusers (``Flux2Transformer2DModel._cp_plan`` / ``_tp_plan``); diffusers 0.42.1
cannot combine them in one model (``ParallelConfig`` refuses both at once), so a layout is one of
the two. No torch here: the settings validate a layout with :func:`parse_layout` and the memory
planner sizes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from core.errors import ConfigError

ParallelKind = Literal["ulysses", "tp"]
KINDS: tuple[ParallelKind, ...] = ("ulysses", "tp")
NONE = "none"
_LAYOUT = re.compile(r"^(?P<kind>[a-z]+):(?P<degree>\d+)$")
_GPUS = re.compile(r"^\d+(,\d+)*$")


@dataclass(frozen=True)
class ParallelLayout:
    """One request over ``degree`` processes (ranks), split the ``kind`` way."""

    kind: ParallelKind
    degree: int

    def __str__(self) -> str:
        return f"{self.kind}:{self.degree}"

    @property
    def divides_weights(self) -> bool:
        """Tensor parallelism gives each rank a share of the weights; Ulysses replicates them."""
        return self.kind == "tp"


def parse_layout(text: str | None) -> ParallelLayout | None:
    """``ulysses:N`` or ``tp:N`` (N >= 2) -> the layout; ``None``, ``""`` or ``none`` -> None.

    Raises:
        ConfigError: anything else, with what is accepted.
    """
    if text is None or text.strip().lower() in ("", NONE):
        return None
    spec = text.strip().lower()
    if "," in spec or "+" in spec:
        raise ConfigError(
            f"parallel={text!r}: diffusers 0.42.1 cannot combine context and tensor parallelism "
            "in one model; use one of ulysses:N or tp:N"
        )
    match = _LAYOUT.match(spec)
    if match is None or match["kind"] not in KINDS:
        raise ConfigError(f"parallel={text!r}: use ulysses:N, tp:N (N >= 2) or none")
    degree = int(match["degree"])
    if degree < 2:
        raise ConfigError(f"parallel={text!r}: the degree must be at least 2 (or use none)")
    kind: ParallelKind = "ulysses" if match["kind"] == "ulysses" else "tp"
    return ParallelLayout(kind, degree)


def parse_gpus(text: str | None) -> tuple[int, ...] | None:
    """``0,1,2,3`` -> (0, 1, 2, 3); ``None`` or ``""`` -> None (the first N GPUs).

    Raises:
        ConfigError: not a comma-separated list of distinct GPU indices.
    """
    if text is None or not text.strip():
        return None
    spec = text.replace(" ", "")
    if not _GPUS.match(spec):
        raise ConfigError(f"gpus={text!r}: use comma-separated GPU indices, e.g. 0,1,2,3")
    gpus = tuple(int(part) for part in spec.split(","))
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"gpus={text!r}: a GPU is listed twice")
    return gpus


def check_group(layout: ParallelLayout | None, gpus: tuple[int, ...] | None) -> None:
    """A GPU list goes with a layout and names one GPU per rank.

    Raises:
        ConfigError: ``gpus`` without ``parallel``, or a list whose length is not the degree.
    """
    if gpus is None:
        return
    if layout is None:
        raise ConfigError("gpus is set but parallel is not: set parallel=ulysses:N or tp:N")
    if len(gpus) != layout.degree:
        raise ConfigError(
            f"parallel={layout} runs {layout.degree} ranks, one per GPU, but gpus lists "
            f"{len(gpus)}: {','.join(map(str, gpus))}"
        )


__all__ = [
    "KINDS",
    "ParallelKind",
    "ParallelLayout",
    "check_group",
    "parse_gpus",
    "parse_layout",
]
