"""Preparation: a claimed job's typed input becomes an :class:`EditRequest` the engine can trust.

The job's endpoint (:mod:`service.endpoints`) sets the request's regime, step count and
acceleration; its LoRAs (lora endpoints only) are resolved to local safetensors files and checked
against the engine (:mod:`service.loras`), in parallel with the reference downloads. Its
reference images are fetched (in parallel, through the SSRF-guarded fetcher), decoded and
resized to their reference size here, on the prepare threads, while the GPU runs the previous
batch. References of a job this worker gave back are kept (a small LRU) and reused if the job
comes back. The input itself was validated at the HTTP edge; what only the fetched images can
tell (undecodable bytes, unusable shapes) is checked here, and a job that fails ends at once with
its fal error, without holding back the others.

The server's own upload URLs (``<origin>/uploads/<id>``, :mod:`service.uploads`) are read from
the upload store, and only for the job's owner; every other URL goes through the SSRF guard.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from PIL import Image

from core.errors import FileDownloadError, Flux2Error, GenerationFailed, NotFound, UnreadableJob
from pipelines.types import EditRequest, LoraWeights
from service.endpoints import get_endpoint
from service.inputs import FetchPolicy, decode_image, load_image
from service.jobs import Job, LogEntry
from service.logs import request_context
from service.loras import LoraResolver
from service.outcomes import failure
from service.queue.base import JobQueue
from service.uploads import Uploads, upload_id_of
from service.worker.finishing import Finisher
from service.worker.screening import SafetyGate
from service.worker.state import Prepared

logger = logging.getLogger(__name__)

#: Jobs whose prepared references are kept after this worker gave them back.
IMAGE_CACHE_JOBS = 32


class Preparer:
    """Prepares claimed jobs on a thread pool; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        finisher: Finisher,
        gate: SafetyGate,
        *,
        fetch_policy: FetchPolicy,
        reference_pixels: int,
        threads: int = 4,
        fetch_threads: int = 8,
        uploads: Uploads | None = None,
        loras: LoraResolver | None = None,
    ) -> None:
        self.queue = queue
        self.finisher = finisher
        self.gate = gate
        self.fetch_policy = fetch_policy
        self.reference_pixels = reference_pixels
        self.uploads = uploads
        self.loras = loras
        self._cache: OrderedDict[str, tuple[tuple[Image.Image, ...], int | None]] = OrderedDict()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="flux2-prepare")
        self._fetch_pool = ThreadPoolExecutor(fetch_threads, thread_name_prefix="flux2-fetch")

    def start(self, job: Job) -> Future[Prepared | None]:
        """Begin preparing ``job``; the future ends with it prepared, or None when the job has
        already finished (bad input, flagged reference)."""
        self.queue.log(job.id, LogEntry("Preparing inputs"))
        return self._pool.submit(self._prepare_checked, job)

    def prepare(self, job: Job) -> Prepared:
        """``job`` prepared; raises the fal error that ends it when it cannot be."""
        with request_context(job.id):
            return self._prepare(job)

    def keep(self, item: Prepared) -> None:
        """Remember a prepared job's references: this worker gives it back and may get it again."""
        request = item.request
        self._cache[item.job.id] = (request.images, request.prepared_for)
        while len(self._cache) > IMAGE_CACHE_JOBS:
            self._cache.popitem(last=False)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)

    # -- internals ---------------------------------------------------------------------------

    def _prepare_checked(self, job: Job) -> Prepared | None:
        try:
            item = self.prepare(job)
        except Flux2Error as exc:
            self.finisher.finish_held(job, failure(exc))
            return None
        except Exception as exc:
            logger.exception("preparing %s failed", job.id)
            self.finisher.finish_held(job, failure(GenerationFailed(f"bad input: {exc}")))
            return None
        return None if self._input_flagged(item) else item

    def _prepare(self, job: Job) -> Prepared:
        fal_input = job.input
        if fal_input is None:
            raise UnreadableJob(job.input_error or f"job {job.id} has no input")
        endpoint = get_endpoint(job.endpoint)
        options = endpoint.engine_options(fal_input)
        lora_inputs = fal_input.lora_inputs() if endpoint.adapters == "request" else []
        loras = [self._fetch_pool.submit(self._lora, job, lora.path, lora.scale, i)
                 for i, lora in enumerate(lora_inputs)]  # fmt: skip
        cached = self._cache.pop(job.id, None)
        images, prepared_for = cached or (self._fetch(job, fal_input.used_image_urls()), None)
        adapters = tuple(future.result() for future in loras)
        seed = fal_input.seed if fal_input.seed is not None else secrets.randbelow(2**31)
        request = EditRequest(
            request_id=job.id,
            prompt=fal_input.prompt,
            images=images,
            prepared_for=prepared_for,
            size=fal_input.output_size(),
            seed=seed,
            num_images=fal_input.num_images,
            guidance_scale=fal_input.guidance_scale,
            enable_prompt_expansion=fal_input.enable_prompt_expansion,
            previews=job.previews,
            regime=options.regime,
            steps=options.steps,
            acceleration=options.acceleration,
            loras=adapters,
        )
        # Resized here, on a prepare thread, so the GPU thread does not spend its time on it;
        # raises InvalidRequest for a reference the engine cannot use.
        request = request.with_prepared_references(self.reference_pixels)
        return Prepared(job=job, input=fal_input, request=request)

    def _fetch(self, job: Job, urls: list[str]) -> tuple[Image.Image, ...]:
        """A request's references, downloaded in parallel; the first failure is raised."""
        futures = [self._fetch_pool.submit(self._load, job, url, i) for i, url in enumerate(urls)]
        return tuple(future.result() for future in futures)

    def _lora(self, job: Job, path: str, scale: float, index: int) -> LoraWeights:
        if self.loras is None:
            raise GenerationFailed("this worker cannot resolve LoRAs")
        with request_context(job.id):
            return self.loras.resolve(path, scale, index=index)

    def _load(self, job: Job, url: str, index: int) -> Image.Image:
        upload_id = upload_id_of(url, job.base_url) if self.uploads is not None else None
        if upload_id is None or self.uploads is None:
            return load_image(url, index=index, policy=self.fetch_policy)
        try:
            data = self.uploads.read(upload_id, job.owner).data
        except NotFound:
            raise FileDownloadError(
                "File download error: no such upload (it expired, or another API key made it)",
                loc=("body", "image_urls", index),
                input=url,
            ) from None
        return decode_image(data, index=index, source=url)

    def _input_flagged(self, item: Prepared) -> bool:
        """Check the references; a flagged job completes now with black, flagged images."""
        if (
            not item.request.images
            or not self.gate.check_inputs
            or not self.gate.applies(item.input)
        ):
            return False
        try:
            flags = [verdict.has_nsfw for verdict in self.gate.check(item.request.images)]
        except Flux2Error as exc:
            self.finisher.finish_held(item.job, failure(exc))
            return True
        if not any(flags):
            return False
        self.finisher.record_flagged("input", sum(flags))
        self.queue.log(item.job.id, LogEntry("Input flagged by the safety checker"))
        self.finisher.finish_held(item.job, self.finisher.results.flagged_input(item))
        return True
