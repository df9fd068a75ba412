"""The worker: claim jobs, batch the compatible ones, run the engine, store outputs, complete.

It knows jobs and batches, not models: the engine comes from a factory called on the worker's own
thread (loading can take minutes), behind the :class:`pipelines.protocol.EditEngine` seam.

Three stages keep the GPU busy:

* the **feeder** thread claims jobs, up to ``max_batch_images`` output images, and starts
  fetching and decoding each one's inputs on a thread pool the moment it is claimed. It keeps
  gathering for as long as the GPU is busy with the previous batch (the jobs would wait anyway),
  and for ``batch_window`` at most when the GPU is idle (a lone request waits no longer than
  that). Then it groups the jobs by shape and hands the group of the oldest job to the GPU
  stage. Jobs of other groups are released back to the queue at once, so they never wait behind
  a batch they cannot join;
* the **GPU** thread runs one batch at a time; every step logs ``step k/N`` to each job and renews
  the lease of every job the worker holds;
* a **finisher** pool encodes images, stores them, completes jobs and sends webhooks.

States, after cog: ``starting`` → ``ready`` ⇄ ``busy``; ``setup_failed`` when the engine cannot
load (jobs then fail at once with a clear error instead of waiting forever); ``defunct`` when the
loop itself died. ``stop()`` drains: no new claims, the running batch finishes, prepared jobs that
did not start are released for another worker.
"""

from __future__ import annotations

import base64
import logging
import queue as queue_module
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from PIL import Image
from pydantic import ValidationError

from core.errors import (
    Flux2Error,
    GenerationFailed,
    OutOfMemory,
    RequestTimeout,
    WorkerDead,
)
from pipelines.protocol import EditEngine
from pipelines.safety import SafetyChecker, SafetyVerdict, apply_verdicts
from pipelines.sizes import resolve_image_size
from pipelines.types import EditRequest, EditResult, StepEvent
from pipelines.validation import validate_request
from service.fal_errors import error_outcome, validation_outcome
from service.inputs import FetchPolicy, load_image
from service.jobs import Job, LogEntry, Outcome
from service.logs import request_context
from service.metrics import Metrics
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
    """Args:
    max_batch_images: most output images one engine call makes (``num_images`` counts).
    batch_window: seconds the feeder waits for more jobs to join a batch while the GPU is
        idle (while it is busy, jobs join until it is free).
    reference_pixels: references are resized to about this many pixels.
    claim_timeout: how long one blocking claim waits (bounds shutdown latency).
    expire_every, reap_every: seconds between expiry and crash-recovery sweeps.
    warmup: run one small edit before reporting ready.
    fail_jobs_when_broken: with an engine that failed to load, fail the jobs (one worker
        serves them all) or leave them in the queue for healthy workers (scale-out).
    prepare_threads, finish_threads: sizes of the CPU pools around the GPU stage.
    encode_threads: images encoded at once (the images of one job are encoded in parallel).
    prefetch_steps: None: the feeder claims jobs for the next batch at any time (one worker:
        nothing is lost by holding them while the GPU works). k: a busy worker claims them only
        once its running batch has at most k steps left (several workers share the queue: jobs
        are left to idle workers instead of waiting behind a busy one).
    """

    max_batch_images: int = 4
    batch_window: float = 0.01
    reference_pixels: int = 1024 * 1024
    claim_timeout: float = 0.25
    expire_every: float = 30.0
    reap_every: float = 5.0
    warmup: bool = True
    prepare_threads: int = 4
    finish_threads: int = 2
    encode_threads: int = 4
    prefetch_steps: int | None = None
    fail_jobs_when_broken: bool = True
    check_inputs: bool = True
    allow_disable_safety: bool = False
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)


@dataclass
class Prepared:
    job: Job
    input: Flux2FlashEditInput
    request: EditRequest


_STOP = object()
IMAGE_CACHE_JOBS = 32
#: While the GPU is busy, how often the gathering feeder looks whether it has become free.
GATHER_POLL_SECONDS = 0.01
#: How long prepared jobs wait, once the GPU is idle, for a job whose inputs are still coming
#: (a slow image host): at least this long, and STRAGGLER_FACTOR times as long as the first job
#: took (a busy CPU slows every job alike); then it is left for a later batch and the others go.
STRAGGLER_GRACE_SECONDS = 0.25
STRAGGLER_FACTOR = 4

#: A claimed job and its preparation: the prepared job, or None when it is already finished
#: (bad input, or a reference the safety checker flagged).
Claimed = tuple[Job, "Future[Prepared | None]"]


class Worker:
    """Runs jobs from ``queue`` on the engine made by ``engine_factory``, on its own threads."""

    def __init__(
        self,
        engine_factory: Callable[[], EditEngine],
        queue: JobQueue,
        store: ArtifactStore,
        *,
        webhooks: WebhookSender | None = None,
        options: WorkerOptions | None = None,
        name: str = "worker",
        safety_factory: Callable[[], SafetyChecker] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name  # shown in job logs: which worker ran it
        self.metrics = metrics  # create_app gives an embedded worker the app's
        self.safety_factory = safety_factory
        self.safety: SafetyChecker | None = None
        self._safety_lock = threading.Lock()
        self.engine_factory = engine_factory
        self.queue = queue
        self.store = store
        self.webhooks = webhooks
        self.options = options or WorkerOptions()
        self.state = WorkerState.STARTING
        self.error: str | None = None
        self.engine: EditEngine | None = None
        self.engine_calls = 0
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._gpu_idle = threading.Event()  # set while the GPU thread waits for a batch
        # Claimed jobs still being prepared when their batch went: they join the next one.
        self._deferred: list[Claimed] = []
        # Set while the feeder may claim jobs for the next batch (see prefetch_steps).
        self._may_claim = threading.Event()
        self._may_claim.set()
        self._batches: queue_module.Queue[list[Prepared] | object] = queue_module.Queue(maxsize=1)
        self._held: set[str] = set()  # claimed and not yet completed or released
        self._held_lock = threading.Lock()
        self._images: OrderedDict[str, tuple[tuple[Image.Image, ...], int | None]] = OrderedDict()
        self._prepare_pool = ThreadPoolExecutor(
            self.options.prepare_threads, thread_name_prefix="flux2-prepare"
        )
        self._finish_pool = ThreadPoolExecutor(
            self.options.finish_threads, thread_name_prefix="flux2-finish"
        )
        self._fetch_pool = ThreadPoolExecutor(8, thread_name_prefix="flux2-fetch")
        # Pillow's encoders release the GIL: a job's images encode side by side.
        self._encode_pool = ThreadPoolExecutor(
            self.options.encode_threads, thread_name_prefix="flux2-encode"
        )
        self._threads: list[threading.Thread] = []
        self._last_expiry = self._last_reap = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        for target, name in ((self._gpu_main, "flux2-gpu"), (self._feeder_main, "flux2-feeder")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 60.0) -> None:
        """Drain: stop claiming, finish the running batch, release the rest, then return."""
        self._stopping.set()
        self._ready.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._release_prepared()
        deferred, self._deferred = self._deferred, []
        self._release([job.id for job, _ in deferred])
        self._finish_pool.shutdown(wait=True)
        self._encode_pool.shutdown(wait=True)
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def held(self) -> set[str]:
        with self._held_lock:
            return set(self._held)

    # -- GPU stage ---------------------------------------------------------------------------

    def _gpu_main(self) -> None:
        try:
            if self.safety_factory is not None:  # fail closed: no checker, no service
                self.safety = self.safety_factory()
                self.safety.load()
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
        finally:
            self._ready.set()
        try:
            while True:
                self._gpu_idle.set()
                self._may_claim.set()
                item = self._batches.get()
                self._gpu_idle.clear()
                if self.options.prefetch_steps is not None:
                    self._may_claim.clear()  # until the batch is nearly done
                if item is _STOP:
                    return
                assert isinstance(item, list)
                self.state = WorkerState.BUSY
                try:
                    self._run_batch(item)
                finally:
                    self.state = WorkerState.READY
        except Exception as exc:
            logger.exception("worker GPU loop died")
            self.state = WorkerState.DEFUNCT
            self.error = f"{type(exc).__name__}: {exc}"
            self._stopping.set()

    def _setup_failed(self, message: str) -> None:
        self.state = WorkerState.SETUP_FAILED
        self.error = message
        logger.error("engine setup failed: %s", message)

    def _run_batch(self, batch: list[Prepared]) -> None:
        runnable = []
        for item in batch:
            if self.queue.is_cancelled(item.job.id):
                self._finish(item.job, CANCELLED)
            elif item.job.start_deadline is not None and time.time() > item.job.start_deadline:
                self._finish(item.job, timeout_outcome())
            else:
                runnable.append(item)
        if runnable:
            self.run_on_engine(runnable)

    def run_on_engine(self, batch: list[Prepared]) -> None:
        """Run ``batch``; on out-of-memory split it in halves and retry, down to one job."""
        assert self.engine is not None
        ids = [item.job.id for item in batch]
        for job_id in ids:
            self.queue.log(
                job_id, LogEntry(f"Running FLUX.2 on {self.name} (batch of {len(batch)})")
            )
        timer = self.metrics.step_timer() if self.metrics is not None else None

        prefetch = self.options.prefetch_steps

        def on_step(event: StepEvent) -> None:
            if timer is not None:
                timer.step()
            if prefetch is not None and event.total - event.step <= prefetch:
                self._may_claim.set()  # the next batch may be gathered now
            self.queue.heartbeat(sorted(self.held))
            for request_id in event.request_ids:
                self.queue.log(request_id, LogEntry(f"step {event.step}/{event.total}"))

        self.engine_calls += 1
        if self.metrics is not None:
            self.metrics.observe_batch(len(batch), sum(i.request.num_images for i in batch))
        try:
            with request_context(",".join(ids)):
                results = self.engine.run(
                    [item.request for item in batch],
                    on_step=on_step,
                    should_cancel=self.queue.is_cancelled,
                )
        except OutOfMemory as exc:
            if len(batch) > 1:
                middle = len(batch) // 2
                logger.warning("out of memory on %d jobs; retrying in halves", len(batch))
                self.run_on_engine(batch[:middle])
                self.run_on_engine(batch[middle:])
                return
            self._fail_all(batch, exc)
            return
        except Flux2Error as exc:
            self._fail_all(batch, exc)
            return
        except Exception as exc:
            logger.exception("engine failed on %s", ids)
            self._fail_all(batch, GenerationFailed(f"generation failed: {exc}"))
            return
        if timer is not None:
            timer.done()
        for item, result in zip(batch, results, strict=True):
            self._finish_pool.submit(self._complete_result, item, result)

    def _fail_all(self, batch: list[Prepared], exc: Flux2Error) -> None:
        outcome = error_outcome(exc)
        for item in batch:
            self._finish(item.job, outcome)

    def _complete_result(self, item: Prepared, result: EditResult) -> None:
        with request_context(item.job.id):
            self._store_result(item, result)

    def _store_result(self, item: Prepared, result: EditResult) -> None:
        try:
            outcome = CANCELLED if result.cancelled else self._output(item, result)
        except Flux2Error as exc:
            outcome = error_outcome(exc)
        except Exception as exc:
            logger.exception("finishing %s failed", item.job.id)
            outcome = error_outcome(GenerationFailed(f"could not store the output: {exc}"))
        self._finish(item.job, outcome)

    # -- feeder stage ------------------------------------------------------------------------

    def _feeder_main(self) -> None:
        self._ready.wait()
        if self.state is WorkerState.SETUP_FAILED and not self.options.fail_jobs_when_broken:
            self._batches.put(_STOP)
            return
        try:
            while not self._stopping.is_set():
                self._housekeeping()
                if self.state is WorkerState.SETUP_FAILED or self.engine is None:
                    jobs = self._claim(self.options.claim_timeout)
                    failure = error_outcome(WorkerDead(f"the model failed to load: {self.error}"))
                    for job in jobs:
                        self._finish(job, failure)
                    continue
                if not self._may_claim.wait(self.options.claim_timeout):
                    continue  # busy, and not near the end of the batch: leave jobs to others
                group = self._group(self._claim_batch())
                if group:
                    self._hand_over(group)
        except Exception as exc:
            logger.exception("worker feeder died")
            self.state = WorkerState.DEFUNCT
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._batches.put(_STOP)

    def _hand_over(self, group: list[Prepared]) -> None:
        if self.options.prefetch_steps is not None:
            # Before the put: the GPU sets it again only after taking this group (in its last
            # steps, or when idle), so the feeder does not claim the next jobs in between.
            self._may_claim.clear()
        while not self._stopping.is_set():
            try:
                self._batches.put(group, timeout=0.1)
                return
            except queue_module.Full:
                continue
        self._release([item.job.id for item in group])

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_reap > self.options.reap_every:
            self._last_reap = now
            reaped = self.queue.reap()
            if reaped.requeued:
                logger.warning(
                    "took back %d jobs from dead workers: %s",
                    len(reaped.requeued),
                    list(reaped.requeued),
                )
            for job in reaped.failed:  # dead letters: completed as failed, their webhook is due
                logger.error("job %s lost its worker too often: failed", job.id)
                if job.webhook_url and job.outcome is not None and self.webhooks is not None:
                    self.webhooks.send(job.webhook_url, job.id, job.outcome)
        if now - self._last_expiry > self.options.expire_every:
            self.expire()

    def expire(self) -> None:
        """Forget expired results and delete their files."""
        self._last_expiry = time.monotonic()
        for job_id in self.queue.expire():
            self.store.delete(job_id)

    def _claim_batch(self) -> list[Claimed]:
        """Block for one job, then let compatible others join up to the image limit: for as long
        as the GPU is busy, and for ``batch_window`` at most once it is idle. Each job's inputs
        are being prepared from the moment it is claimed."""
        claimed, self._deferred = self._deferred, []
        if not claimed:
            first = self._claim(self.options.claim_timeout)
            if not first:
                return []
            claimed = [self._start_preparing(first[0])]
        images = sum(_num_images(job) for job, _ in claimed)
        deadline = time.monotonic() + self.options.batch_window
        while images < self.options.max_batch_images and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                if self._gpu_idle.is_set():
                    break
                left = GATHER_POLL_SECONDS  # the GPU is busy: keep gathering
            more = self._claim(left)
            if not more:
                continue
            if images + _num_images(more[0]) > self.options.max_batch_images:
                self._release([more[0].id])  # too big to join: first in line for the next one
                break
            claimed.append(self._start_preparing(more[0]))
            images += _num_images(more[0])
        return claimed

    def _claim(self, timeout: float) -> list[Job]:
        jobs = self.queue.claim(1, timeout)
        with self._held_lock:
            self._held.update(job.id for job in jobs)
        return jobs

    def _start_preparing(self, job: Job) -> Claimed:
        self.queue.log(job.id, LogEntry("Preparing inputs"))
        return job, self._prepare_pool.submit(self._prepare_checked, job)

    def _prepare_checked(self, job: Job) -> Prepared | None:
        """The prepared job; None when it is already finished (bad input, flagged reference)."""
        try:
            item = self.prepare(job)
        except ValidationError as exc:
            self._finish_held(job, validation_outcome(exc.errors(include_url=False)))
            return None
        except Flux2Error as exc:
            self._finish_held(job, error_outcome(exc))
            return None
        except Exception as exc:
            logger.exception("preparing %s failed", job.id)
            self._finish_held(job, error_outcome(GenerationFailed(f"bad input: {exc}")))
            return None
        return None if self._input_flagged(item) else item

    def _finish_held(self, job: Job, outcome: Outcome) -> None:
        """Finish a job whose preparation ended, unless this worker gave it back meanwhile
        (a drain while its inputs were still coming): then it is another worker's now."""
        if job.id in self.held:
            self._finish(job, outcome)

    def _group(self, claimed: list[Claimed]) -> list[Prepared]:
        """The oldest prepared job's shape group; the other groups are released.

        Once one job is prepared and the GPU is idle, jobs still being prepared after the
        straggler grace (see ``STRAGGLER_GRACE_SECONDS``) are left for the next batch (still
        held, still being prepared), so one slow image host does not hold the others back.
        """
        started = time.monotonic()
        pending = {future for _, future in claimed}
        grace: float | None = None  # known once the first preparation has ended
        while pending and not self._stopping.is_set():
            _, pending = wait(pending, timeout=GATHER_POLL_SECONDS, return_when=FIRST_COMPLETED)
            waited = time.monotonic() - started
            if grace is None and len(pending) < len(claimed):
                grace = max(STRAGGLER_GRACE_SECONDS, STRAGGLER_FACTOR * waited)
            if pending and grace is not None and waited >= grace and self._gpu_idle.is_set():
                break
        self._deferred = [(job, future) for job, future in claimed if future in pending]
        for job, _ in self._deferred:
            self.queue.log(job.id, LogEntry("Inputs still downloading: joins the next batch"))
        ready = [future for _, future in claimed if future not in pending]
        prepared = [item for future in ready if (item := future.result()) is not None]
        if not prepared:
            return []
        pixels = self.options.reference_pixels
        key = prepared[0].request.batch_key(pixels)
        group = [item for item in prepared if item.request.batch_key(pixels) == key]
        others = [item for item in prepared if item.request.batch_key(pixels) != key]
        for item in others:  # keep their decoded images in case this worker gets them back
            self._images[item.job.id] = (item.request.images, item.request.prepared_for)
            while len(self._images) > IMAGE_CACHE_JOBS:
                self._images.popitem(last=False)
        if others:
            self._release([item.job.id for item in others])
        return group

    def _input_flagged(self, item: Prepared) -> bool:
        """Check the references; a flagged job completes now with black, flagged images."""
        if not self.options.check_inputs or not self._checked(item):
            return False
        try:
            flags = [verdict.has_nsfw for verdict in self._check(item.request.images)]
        except Flux2Error as exc:
            self._finish_held(item.job, error_outcome(exc))
            return True
        if not any(flags):
            return False
        if self.metrics is not None:
            self.metrics.flagged("input", sum(flags))
        self.queue.log(item.job.id, LogEntry("Input flagged by the safety checker"))
        result = self._flagged_input(item)
        outcome = self._encode(item, result.images, [True] * len(result.images), result)
        self._finish_held(item.job, outcome)
        return True

    def prepare(self, job: Job) -> Prepared:
        """The job's input, validated, with its reference images fetched, decoded and resized."""
        with request_context(job.id):
            return self._prepare(job)

    def _prepare(self, job: Job) -> Prepared:
        fal_input = Flux2FlashEditInput.model_validate(job.input)
        size_value: Any = fal_input.image_size
        if hasattr(size_value, "model_dump"):
            size_value = size_value.model_dump()
        # References this worker prepared before (then released the job) are reused as they are.
        cached = self._images.pop(job.id, None)
        images, prepared_for = cached or (self._fetch(fal_input.used_image_urls()), None)
        request = EditRequest(
            request_id=job.id,
            prompt=fal_input.prompt,
            images=images,
            prepared_for=prepared_for,
            size=resolve_image_size(size_value),
            seed=fal_input.seed if fal_input.seed is not None else secrets.randbelow(2**31),
            num_images=fal_input.num_images,
            guidance_scale=fal_input.guidance_scale,
            enable_prompt_expansion=fal_input.enable_prompt_expansion,
        )
        pixels = self.options.reference_pixels
        validate_request(request, target_pixels=pixels)
        # Resized here, on a prepare thread, so the GPU thread does not spend its time on it.
        return Prepared(job=job, input=fal_input, request=request.with_prepared_references(pixels))

    def _fetch(self, urls: list[str]) -> tuple[Image.Image, ...]:
        """A request's references, downloaded in parallel; the first failure is raised."""
        policy = self.options.fetch_policy
        futures = [
            self._fetch_pool.submit(load_image, url, index=i, policy=policy)
            for i, url in enumerate(urls)
        ]
        return tuple(future.result() for future in futures)

    def _release(self, job_ids: list[str]) -> None:
        """Give jobs back to the queue; one cancelled while this worker held it is completed by
        the queue instead, and its webhook sent here."""
        with self._held_lock:
            self._held.difference_update(job_ids)
        for done in self.queue.release(job_ids):
            if done.webhook_url and done.outcome is not None and self.webhooks is not None:
                self.webhooks.send(done.webhook_url, done.id, done.outcome)

    def _release_prepared(self) -> None:
        while True:
            try:
                item = self._batches.get_nowait()
            except queue_module.Empty:
                return
            if isinstance(item, list):
                self._release([prepared.job.id for prepared in item])

    # -- finishing ---------------------------------------------------------------------------

    def _checked(self, item: Prepared) -> bool:
        """Whether this job's images go through the safety checker."""
        if self.safety is None:
            return False
        return item.input.enable_safety_checker or not self.options.allow_disable_safety

    def _check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        assert self.safety is not None
        with self._safety_lock:  # one check at a time: the checker is capped to one thread
            return self.safety.check(list(images))

    def _output(self, item: Prepared, result: EditResult) -> Outcome:
        images: Sequence[Image.Image] = result.images
        flags = [False] * len(images)
        if self._checked(item):
            images, flags = apply_verdicts(list(images), self._check(images))
            if any(flags):
                if self.metrics is not None:
                    self.metrics.flagged("output", sum(flags))
                self.queue.log(item.job.id, LogEntry("Output flagged by the safety checker"))
        return self._encode(item, images, flags, result)

    def _flagged_input(self, item: Prepared) -> EditResult:
        """The result for a job whose reference images were flagged: black, flagged images."""
        size = (item.request.size.width, item.request.size.height)
        black = tuple(Image.new("RGB", size) for _ in range(item.request.num_images))
        return EditResult(
            request_id=item.job.id,
            images=black,
            prompt=item.request.prompt,
            seed=item.request.seed,
            timings={"inference": 0.0},
        )

    def _encode(
        self,
        item: Prepared,
        images: Sequence[Image.Image],
        flags: list[bool],
        result: EditResult,
    ) -> Outcome:
        fmt = OutputFormat(item.input.output_format)

        def encode(image: Image.Image) -> ImageFile:
            data = encode_image(image, fmt)
            name = f"{secrets.token_urlsafe(16)}.{fmt.extension}"
            if item.input.sync_mode:
                url = f"data:{fmt.content_type};base64,{base64.b64encode(data).decode()}"
            else:
                key = self.store.put(item.job.id, name, data, fmt.content_type)
                url = f"{item.job.base_url}/files/{key}"
            return ImageFile(
                url=url,
                content_type=fmt.content_type,
                file_name=name,
                file_size=len(data),
                width=image.width,
                height=image.height,
            )

        if len(images) == 1:
            files = [encode(images[0])]
        else:  # in parallel, in order
            files = list(self._encode_pool.map(encode, images))
        output = Flux2FlashEditOutput(
            images=files,
            timings={k: round(v, 4) for k, v in result.timings.items()},
            seed=result.seed,
            has_nsfw_concepts=flags,
            prompt=result.prompt,
        )
        return Outcome(
            status_code=200,
            body=output.model_dump(),
            inference_time=result.timings.get("inference"),
        )

    def _finish(self, job: Job, outcome: Outcome) -> None:
        with request_context(job.id):
            self._finish_job(job, outcome)

    def _finish_job(self, job: Job, outcome: Outcome) -> None:
        if outcome.ok:
            self.queue.log(job.id, LogEntry("Completed"))
        else:
            self.queue.log(job.id, LogEntry(outcome.error or "Failed", level="ERROR"))
        done = self.queue.complete(job.id, outcome)
        if done is not None:
            if self.metrics is not None:
                self.metrics.observe_job(job, outcome)
            logger.info("job finished: %s", outcome.error_type or "ok")
        with self._held_lock:
            self._held.discard(job.id)
        if done is not None and done.webhook_url and self.webhooks is not None:
            self.webhooks.send(done.webhook_url, job.id, outcome)


def timeout_outcome() -> Outcome:
    """fal's answer to a request that did not start within ``X-Fal-Request-Timeout``."""
    outcome = error_outcome(RequestTimeout("Request timed out"))
    return Outcome(
        status_code=outcome.status_code,
        body=outcome.body,
        error=outcome.error,
        error_type=outcome.error_type,
        headers={"X-Fal-Request-Timeout-Type": "user"},
    )


def _num_images(job: Job) -> int:
    value = job.input.get("num_images", 1)
    return value if isinstance(value, int) and value > 0 else 1
