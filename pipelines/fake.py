"""A deterministic, instant engine for service tests and local development.

It honours the engine contract (validation, one progress event per step, cancellation before
every step, one image per ``seed + k``, previews at the steps the request's ``previews`` pick)
and draws a picture from the prompt, the seed and the first reference, so tests can tell outputs
apart without running a model. A preview is the final picture, small and faded towards grey by
how many steps are left.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from PIL import Image, ImageDraw

from pipelines.prompt_cache import CacheStats
from pipelines.sizes import REFERENCE_PIXELS
from pipelines.types import (
    CancelCheck,
    EditRequest,
    EditResult,
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

    @property
    def num_steps(self) -> int:
        return self._num_steps

    def prompt_cache_stats(self) -> CacheStats | None:
        return None

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
        for request in batch:  # what the real engine checks when it groups the batch
            request.batch_key(self.reference_pixels)
        self.calls.append(tuple(r.request_id for r in batch))
        started = time.perf_counter()
        alive = list(range(len(batch)))
        due = preview_plan(batch, self._num_steps)
        for step in range(1, self._num_steps + 2):
            if should_cancel is not None:
                alive = [i for i in alive if not should_cancel(batch[i].request_id)]
            if step > self._num_steps or not alive:
                break
            if self.step_seconds:
                time.sleep(self.step_seconds)
            if on_step is not None:
                shown = tuple(
                    Preview(
                        batch[j].request_id, k, step, self._num_steps, self._preview(batch[j], step)
                    )
                    for j, k in due.get(step, ())
                    if j in alive
                )
                ids = tuple(batch[i].request_id for i in alive)
                on_step(StepEvent(step, self._num_steps, ids, shown))
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
        return Image.blend(grey, small, step / self._num_steps)


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
