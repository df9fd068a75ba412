"""The worker loop: claim jobs, prepare their inputs, run the engine, store outputs, complete.

It knows jobs and batches, not models: the engine comes from a factory called on the worker's own
thread (loading can take minutes), behind the :class:`pipelines.protocol.EditEngine` seam.
State, after cog: ``starting`` → ``ready`` ⇄ ``busy``; ``setup_failed`` when the engine cannot
load (jobs then fail at once with a clear error instead of waiting forever); ``defunct`` when the
loop itself died.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from pipelines.protocol import EditEngine
from pipelines.sizes import resolve_image_size
from pipelines.types import EditRequest, EditResult, StepEvent
from pipelines.validation import validate_request
from service.errors import Flux2Error, GenerationFailed, WorkerDead
from service.fal_errors import error_outcome, validation_outcome
from service.inputs import load_image
from service.jobs import Job, LogEntry, Outcome
from service.outputs import OutputFormat, encode_image
from service.queue.base import JobQueue
from service.queue.memory import CANCELLED
from service.schema import Flux2FlashEditInput, Flux2FlashEditOutput, ImageFile
from service.storage.base import ArtifactStore
from service.webhooks import WebhookSender

logger = logging.getLogger(__name__)


class WorkerState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    SETUP_FAILED = "setup_failed"
    DEFUNCT = "defunct"


@dataclass(frozen=True)
class WorkerOptions:
    max_batch_images: int = 4
    reference_pixels: int = 1024 * 1024
    claim_timeout: float = 0.25
    expire_every: float = 30.0
    warmup: bool = True


@dataclass
class _Prepared:
    job: Job
    input: Flux2FlashEditInput
    request: EditRequest


class Worker:
    """Runs jobs from ``queue`` on the engine made by ``engine_factory``, on its own thread."""

    def __init__(
        self,
        engine_factory: Callable[[], EditEngine],
        queue: JobQueue,
        store: ArtifactStore,
        *,
        webhooks: WebhookSender | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        self.engine_factory = engine_factory
        self.queue = queue
        self.store = store
        self.webhooks = webhooks
        self.options = options or WorkerOptions()
        self.state = WorkerState.STARTING
        self.error: str | None = None
        self.engine: EditEngine | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_expiry = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="flux2-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            self.engine = self.engine_factory()
            if self.options.warmup:
                self.engine.warmup()
            self.state = WorkerState.READY
            logger.info("worker ready")
        except Flux2Error as exc:
            self._setup_failed(exc.message)
        except Exception as exc:  # the model could not load: say why, keep answering
            logger.exception("engine setup failed")
            self._setup_failed(f"{type(exc).__name__}: {exc}")
        try:
            while not self._stop.is_set():
                self._tick()
        except Exception as exc:
            logger.exception("worker loop died")
            self.state = WorkerState.DEFUNCT
            self.error = f"{type(exc).__name__}: {exc}"

    def _setup_failed(self, message: str) -> None:
        self.state = WorkerState.SETUP_FAILED
        self.error = message
        logger.error("engine setup failed: %s", message)

    def _tick(self) -> None:
        if time.monotonic() - self._last_expiry > self.options.expire_every:
            self.expire()
        jobs = self.queue.claim(self.options.max_batch_images, self.options.claim_timeout)
        if not jobs:
            return
        if self.engine is None or self.state is WorkerState.SETUP_FAILED:
            failure = error_outcome(WorkerDead(f"the model failed to load: {self.error}"))
            for job in jobs:
                self._finish(job, failure)
            return
        self.state = WorkerState.BUSY
        try:
            self.process(jobs)
        finally:
            self.state = WorkerState.READY

    def expire(self) -> None:
        """Forget expired results and delete their files."""
        self._last_expiry = time.monotonic()
        for job_id in self.queue.expire():
            self.store.delete(job_id)

    # -- one batch ---------------------------------------------------------------------------

    def process(self, jobs: list[Job]) -> None:
        """Prepare, run and finish ``jobs``; every job ends COMPLETED, whatever happens."""
        assert self.engine is not None
        prepared: list[_Prepared] = []
        for job in jobs:
            if self.queue.is_cancelled(job.id):
                self._finish(job, CANCELLED)
                continue
            self.queue.log(job.id, LogEntry("Preparing inputs"))
            try:
                prepared.append(self._prepare(job))
            except ValidationError as exc:
                self._finish(job, validation_outcome(exc.errors(include_url=False)))
            except Flux2Error as exc:
                self._finish(job, error_outcome(exc))
        if not prepared:
            return
        for item in prepared:
            self.queue.log(item.job.id, LogEntry("Running FLUX.2"))

        def on_step(event: StepEvent) -> None:
            for request_id in event.request_ids:
                self.queue.log(request_id, LogEntry(f"step {event.step}/{event.total}"))

        try:
            results = self.engine.run(
                [item.request for item in prepared],
                on_step=on_step,
                should_cancel=self.queue.is_cancelled,
            )
        except Flux2Error as exc:
            outcome = error_outcome(exc)
            for item in prepared:
                self._finish(item.job, outcome)
            return
        except Exception as exc:
            logger.exception("engine failed on %s", [item.job.id for item in prepared])
            outcome = error_outcome(GenerationFailed(f"generation failed: {exc}"))
            for item in prepared:
                self._finish(item.job, outcome)
            return
        for item, result in zip(prepared, results, strict=True):
            try:
                outcome = CANCELLED if result.cancelled else self._output(item, result)
            except Flux2Error as exc:
                outcome = error_outcome(exc)
            self._finish(item.job, outcome)

    def _prepare(self, job: Job) -> _Prepared:
        fal_input = Flux2FlashEditInput.model_validate(job.input)
        size_value: Any = fal_input.image_size
        if hasattr(size_value, "model_dump"):
            size_value = size_value.model_dump()
        images = tuple(
            load_image(url, index=i) for i, url in enumerate(fal_input.used_image_urls())
        )
        request = EditRequest(
            request_id=job.id,
            prompt=fal_input.prompt,
            images=images,
            size=resolve_image_size(size_value),
            seed=fal_input.seed if fal_input.seed is not None else secrets.randbelow(2**31),
            num_images=fal_input.num_images,
            guidance_scale=fal_input.guidance_scale,
            enable_prompt_expansion=fal_input.enable_prompt_expansion,
        )
        validate_request(request, target_pixels=self.options.reference_pixels)
        return _Prepared(job=job, input=fal_input, request=request)

    def _output(self, item: _Prepared, result: EditResult) -> Outcome:
        fmt = OutputFormat(item.input.output_format)
        files = []
        for image in result.images:
            data = encode_image(image, fmt)
            name = f"{secrets.token_urlsafe(16)}.{fmt.extension}"
            if item.input.sync_mode:
                url = f"data:{fmt.content_type};base64,{base64.b64encode(data).decode()}"
            else:
                key = self.store.put(item.job.id, name, data, fmt.content_type)
                url = f"{item.job.base_url}/files/{key}"
            files.append(
                ImageFile(
                    url=url,
                    content_type=fmt.content_type,
                    file_name=name,
                    file_size=len(data),
                    width=image.width,
                    height=image.height,
                )
            )
        output = Flux2FlashEditOutput(
            images=files,
            timings={k: round(v, 4) for k, v in result.timings.items()},
            seed=result.seed,
            has_nsfw_concepts=[False] * len(files),
            prompt=result.prompt,
        )
        return Outcome(
            status_code=200,
            body=output.model_dump(),
            inference_time=result.timings.get("inference"),
        )

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if outcome.ok:
            self.queue.log(job.id, LogEntry("Completed"))
        else:
            self.queue.log(job.id, LogEntry(outcome.error or "Failed", level="ERROR"))
        done = self.queue.complete(job.id, outcome)
        if done is not None and done.webhook_url and self.webhooks is not None:
            self.webhooks.send(done.webhook_url, job.id, done.outcome or outcome)
