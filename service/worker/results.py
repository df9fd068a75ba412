"""What a finished engine run becomes: checked, encoded and stored images in the endpoint's output.

Outputs go through the safety checker (a flagged image is replaced by a black one, as fal does),
are encoded in the format asked for (a job's images in parallel: Pillow's encoders release the
GIL) and stored, or returned as ``data:`` URIs with ``sync_mode``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from pipelines.safety import apply_verdicts
from pipelines.types import EditResult
from service.endpoints import DEFAULT_ENDPOINT, ENDPOINTS
from service.jobs import LogEntry, Outcome
from service.outcomes import success
from service.outputs import OutputFormat, encode_image
from service.queue.base import JobQueue
from service.schema import ImageFile
from service.storage.base import ArtifactStore
from service.worker.screening import SafetyGate
from service.worker.state import Prepared

#: Told how many images a stage flagged (``input`` or ``output``), for the metrics.
FlagRecorder = Callable[[str, int], None]


class ResultWriter:
    """Turns engine results into outcomes; see the module docstring."""

    def __init__(
        self,
        queue: JobQueue,
        store: ArtifactStore,
        gate: SafetyGate,
        *,
        on_flagged: FlagRecorder,
        encode_threads: int = 4,
    ) -> None:
        self.queue = queue
        self.store = store
        self.gate = gate
        self.on_flagged = on_flagged
        self._pool = ThreadPoolExecutor(encode_threads, thread_name_prefix="flux2-encode")

    def output(self, item: Prepared, result: EditResult) -> Outcome:
        """The outcome of a job the engine ran: its images checked, encoded and stored."""
        images: Sequence[Image.Image] = result.images
        flags = [False] * len(images)
        if self.gate.applies(item.input):
            images, flags = apply_verdicts(list(images), self.gate.check(images))
            if any(flags):
                self.on_flagged("output", sum(flags))
                self.queue.log(item.job.id, LogEntry("Output flagged by the safety checker"))
        return self._encode(item, images, flags, result)

    def flagged_input(self, item: Prepared) -> Outcome:
        """The outcome of a job whose references were flagged: black, flagged images, and the
        model never ran."""
        size = (item.request.size.width, item.request.size.height)
        black = tuple(Image.new("RGB", size) for _ in range(item.request.num_images))
        result = EditResult(
            request_id=item.job.id,
            images=black,
            prompt=item.request.prompt,
            seed=item.request.seed,
            timings={"inference": 0.0},
        )
        return self._encode(item, black, [True] * len(black), result)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    def _encode(
        self,
        item: Prepared,
        images: Sequence[Image.Image],
        flags: list[bool],
        result: EditResult,
    ) -> Outcome:
        fmt = OutputFormat(item.input.output_format)

        def encode(image: Image.Image) -> ImageFile:
            data = encode_image(image, fmt, quality=item.job.output_compression)
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

        # One image: encoded here. Several: in parallel, in order.
        files = [encode(images[0])] if len(images) == 1 else list(self._pool.map(encode, images))
        endpoint = ENDPOINTS.get(item.job.endpoint, DEFAULT_ENDPOINT)
        output = endpoint.output_model(
            images=files,
            timings={k: round(v, 4) for k, v in result.timings.items()},
            seed=result.seed,
            has_nsfw_concepts=flags,
            prompt=result.prompt,
        )
        return success(output, inference_time=result.timings.get("inference"))
