"""Publishing step previews: stored beside the job's outputs, announced in its logs.

Runs on the GPU thread, inside the step callback, and only for steps that carry previews (a
request that asked for none costs nothing here). A preview is small (a quarter of the output's
sides), encoded in the job's output format, so this takes a few milliseconds.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping

from core.errors import Flux2Error
from pipelines.types import Preview, preview_steps
from service.outputs import OutputFormat, encode_image
from service.previews import PreviewNote
from service.queue.base import JobQueue
from service.storage.base import ArtifactStore
from service.worker.state import Prepared

logger = logging.getLogger(__name__)


class PreviewWriter:
    def __init__(self, queue: JobQueue, store: ArtifactStore) -> None:
        self.queue = queue
        self.store = store

    def publish(self, previews: Iterable[Preview], items: Mapping[str, Prepared]) -> None:
        """Store each preview and log its line; a failure loses that preview, not the job."""
        for preview in previews:
            item = items.get(preview.request_id)
            if item is None:
                continue
            try:
                self._publish(preview, item)
            except Flux2Error as exc:
                logger.warning("preview of %s lost: %s", item.job.id, exc.message)

    def _publish(self, preview: Preview, item: Prepared) -> None:
        fmt = OutputFormat(item.input.output_format)
        data = encode_image(preview.image, fmt)
        name = f"preview{preview.index}-{secrets.token_urlsafe(12)}.{fmt.extension}"
        key = self.store.put(item.job.id, name, data, fmt.content_type)
        note = PreviewNote(
            index=preview.index,
            count=len(preview_steps(preview.total, item.request.previews)),
            step=preview.step,
            total=preview.total,
            url=f"{item.job.base_url}/files/{key}",
        )
        self.queue.log(item.job.id, note.entry())
