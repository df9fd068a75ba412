"""A deterministic, instant engine for service tests and local development.

It honours the engine contract (validation, requests that cannot share tensors run in separate
sub-batches, one progress event per step of the sub-batch's own step count, cancellation before
every step, one image per ``seed + k``, previews at the steps the request's ``previews`` pick)
and draws a picture from the prompt, the seed, the recipe (regime, steps, adapters) and the first
reference, so tests can tell outputs apart without running a model. A preview is the final
picture, small and faded towards grey by how many steps are left.

Its :meth:`FakeEngine.check_lora` accepts a safetensors file (8-byte header length and a JSON
header) whose tensor names look like LoRA keys (``lora_A``/``lora_B`` or ``lora_down``/
``lora_up``).
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Sequence

from PIL import Image, ImageDraw

from core.errors import InvalidRequest
from pipelines.prompt_cache import CacheStats
from pipelines.sizes import REFERENCE_PIXELS
from pipelines.types import (
    BASE_STEPS,
    CancelCheck,
    EditRequest,
    EditResult,
    LoraWeights,
    Preview,
    StepCallback,
    StepEvent,
    preview_plan,
    preview_size,
)


class FakeEngine:
    """Implements :class:`pipelines.protocol.EditEngine` without a model."""

    def __init__(
        self,
        *,
        num_steps: int = 8,
        step_seconds: float = 0.0,
        reference_pixels: int = REFERENCE_PIXELS,
    ) -> None:
        self._num_steps = num_steps
        self.step_seconds = step_seconds
        self.reference_pixels = reference_pixels
        self.loaded = False
        self.calls: list[tuple[str, ...]] = []  # request ids of every run() call
        self.sub_batches: list[tuple[EditRequest, ...]] = []  # every sub-batch run, in order
        self.checked_loras: list[LoraWeights] = []

    @property
    def num_steps(self) -> int:
        return self._num_steps

    def prompt_cache_stats(self) -> CacheStats | None:
        return None

    def adapter_cache_stats(self) -> CacheStats | None:
        return None

    def check_lora(self, lora: LoraWeights) -> None:
        self.checked_loras.append(lora)
        names = _safetensors_names(lora.path)
        if not names or not all(_is_lora_key(name) for name in names):
            raise InvalidRequest(
                "the tensors are not LoRA weights (expected lora_A/lora_B or lora_down/lora_up "
                "keys)",
                type="lora_load_error",
            )

    def steps_of(self, request: EditRequest) -> int:
        """The steps ``request`` runs: its own, or its regime's default."""
        if request.steps is not None:
            return request.steps
        return self._num_steps if request.regime == "turbo" else BASE_STEPS

    def load(self) -> None:
        self.loaded = True

    def warmup(self) -> None:
        return None

    def run(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[EditResult]:
        groups: dict[tuple[object, ...], list[int]] = {}
        for index, request in enumerate(batch):  # as the real engine groups the batch
            groups.setdefault(request.batch_key(self.reference_pixels), []).append(index)
        self.calls.append(tuple(r.request_id for r in batch))
        results: dict[int, EditResult] = {}
        for indices in groups.values():
            group = [batch[i] for i in indices]
            self.sub_batches.append(tuple(group))
            results.update(
                zip(indices, self._run_group(group, on_step, should_cancel), strict=True)
            )
        return [results[i] for i in range(len(batch))]

    def _run_group(
        self,
        batch: Sequence[EditRequest],
        on_step: StepCallback | None,
        should_cancel: CancelCheck | None,
    ) -> list[EditResult]:
        total = self.steps_of(batch[0])
        started = time.perf_counter()
        alive = list(range(len(batch)))
        due = preview_plan(batch, total)
        for step in range(1, total + 2):
            if should_cancel is not None:
                alive = [i for i in alive if not should_cancel(batch[i].request_id)]
            if step > total or not alive:
                break
            if self.step_seconds:
                time.sleep(self.step_seconds)
            if on_step is not None:
                shown = tuple(
                    Preview(batch[j].request_id, k, step, total, self._preview(batch[j], step))
                    for j, k in due.get(step, ())
                    if j in alive
                )
                ids = tuple(batch[i].request_id for i in alive)
                on_step(StepEvent(step, total, ids, shown))
        elapsed = time.perf_counter() - started
        results = []
        for i, request in enumerate(batch):
            prompt = _expand(request.prompt) if request.enable_prompt_expansion else request.prompt
            images = (
                tuple(_draw(request, prompt, request.seed + k) for k in range(request.num_images))
                if i in alive
                else ()
            )
            results.append(
                EditResult(
                    request_id=request.request_id,
                    images=images,
                    prompt=prompt,
                    seed=request.seed,
                    timings={"inference": elapsed},
                    cancelled=i not in alive,
                )
            )
        return results

    def _preview(self, request: EditRequest, step: int) -> Image.Image:
        prompt = _expand(request.prompt) if request.enable_prompt_expansion else request.prompt
        small = _draw(request, prompt, request.seed).resize(preview_size(request.size))
        grey = Image.new("RGB", small.size, (128, 128, 128))
        return Image.blend(grey, small, step / self.steps_of(request))


def _safetensors_names(path: object) -> list[str]:
    """The tensor names of a safetensors file ([] when it is not one)."""
    try:
        with open(str(path), "rb") as file:
            head = file.read(8)
            if len(head) < 8:
                return []
            (length,) = struct.unpack("<Q", head)
            if length > 64 * 1024 * 1024:
                return []
            header = json.loads(file.read(length))
    except (OSError, ValueError):
        return []
    if not isinstance(header, dict):
        return []
    return [name for name in header if name != "__metadata__"]


def _is_lora_key(name: str) -> bool:
    return any(part in name for part in ("lora_A", "lora_B", "lora_down", "lora_up"))


def _expand(prompt: str) -> str:
    return f"{prompt}, rendered in rich detail with natural lighting"


def _draw(request: EditRequest, prompt: str, seed: int) -> Image.Image:
    # Outputs depend on what the real engine's would: the regime, steps and adapters too (the
    # default regime keeps the digest of the flash edit, so recorded outputs stay the same).
    recipe = (
        ""
        if (request.regime, request.steps, request.loras) == ("turbo", None, ())
        else f"\0{request.regime}\0{request.steps}\0"
        + ",".join(f"{lora.name}:{lora.scale:g}" for lora in request.loras)
    )
    digest = hashlib.sha256(f"{prompt}\0{seed}{recipe}".encode()).digest()
    image = Image.new("RGB", (request.size.width, request.size.height), tuple(digest[:3]))
    if request.images:  # text-to-image requests have none
        reference = request.images[0].convert("RGB").resize((request.size.width // 2,) * 2)
        image.paste(reference, (request.size.width // 4, request.size.height // 4))
    ImageDraw.Draw(image).rectangle(
        (0, 0, request.size.width - 1, 7), fill=(digest[3], digest[4], digest[5])
    )
    return image
