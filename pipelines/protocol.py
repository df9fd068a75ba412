"""The engine seam: what the worker needs from any image-edit engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pipelines.prompt_cache import CacheStats
from pipelines.types import CancelCheck, EditRequest, EditResult, LoraWeights, StepCallback


@runtime_checkable
class EditEngine(Protocol):
    """An image-edit engine. The lifecycle is ``load()`` once, ``warmup()``, then ``run()``.

    Implementations: :class:`pipelines.flux2.Flux2Engine` (the real diffusers pipeline, tiny or
    full weights), :class:`pipelines.parallel.ParallelEngine` (one request over a group of rank
    processes) and :class:`pipelines.fake.FakeEngine` (deterministic and instant, for tests).
    An engine that holds processes also has ``close()``, which the worker calls when it stops.
    """

    @property
    def num_steps(self) -> int:
        """Denoising steps of the turbo regime (a request's ``steps=None``); progress events of
        a sub-batch count up to its own step count."""
        ...

    def prompt_cache_stats(self) -> CacheStats | None:
        """Counters of the prompt-embedding cache, for metrics; None without one."""
        ...

    def adapter_cache_stats(self) -> CacheStats | None:
        """Counters of the loaded-adapter (LoRA) cache, for metrics; None without one."""
        ...

    def check_lora(self, lora: LoraWeights) -> None:
        """Check that ``lora`` (a local file) can be applied to this engine's model.

        Called by the worker's preparation stage, off the GPU thread, before the job joins a
        batch; must be safe to call while ``run`` is running.

        Raises:
            InvalidRequest: the file is not safetensors, is unreadable, or its keys or shapes
                are for another model (the message says which).
        """
        ...

    def load(self) -> None:
        """Load weights. Raises ``WeightsError`` when they are missing or unreadable."""
        ...

    def warmup(self) -> None:
        """Run one small edit so the first real request does not pay for lazy initialisation."""
        ...

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        """Run a batch of edits; return one result per request, in order.

        Requests are trusted: callers pass requests that passed
        :func:`pipelines.validation.validate_request` (the worker's come from inputs validated
        at the HTTP edge). A reference the engine cannot resize still raises ``InvalidRequest``
        before any model work.

        Args:
            batch: the requests. Requests that cannot share tensors are run in sub-batches.
            on_step: called once per denoising step of every sub-batch.
            should_cancel: asked once per step for each running request; a request for which it
                answers True stops at once (no decode) and comes back with ``cancelled=True``.

        Raises:
            InvalidRequest: a reference image cannot be used; raised before any model work.
            GenerationFailed: the model failed; the whole call failed, nothing is returned.
        """
        ...
