"""Step previews as a job carries them: small images in the store, announced in the job's logs.

A worker that made a preview (:class:`pipelines.types.Preview`) stores it beside the job's
outputs and appends a log line ``preview 1/2 (step 3/8): <url>``. Logs travel through the queue's
change feed, so every API node (OpenAI streams, the playground following a status stream, fal
clients reading logs) learns of a preview the moment it exists, and reads the image from the
store. fal routes ask for previews with the ``X-Flux2-Previews: N`` header (0..3), the OpenAI
routes with ``partial_images``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.jobs import LogEntry

#: The request header the fal routes take a number of previews from.
PREVIEWS_HEADER = "x-flux2-previews"
_LINE = re.compile(r"^preview (\d+)/(\d+) \(step (\d+)/(\d+)\): (\S+)$")


@dataclass(frozen=True)
class PreviewNote:
    """What a preview log line says; ``index`` counts from 0."""

    index: int
    count: int
    step: int
    total: int
    url: str

    def entry(self) -> LogEntry:
        return LogEntry(
            f"preview {self.index + 1}/{self.count} (step {self.step}/{self.total}): {self.url}"
        )

    @property
    def file_key(self) -> str:
        """The store key of the image (what follows ``/files/`` in its URL)."""
        return self.url.split("/files/", 1)[-1]


def read_note(entry: LogEntry) -> PreviewNote | None:
    """The preview a log line announces, or None for any other line."""
    match = _LINE.match(entry.message)
    if match is None:
        return None
    index, count, step, total = (int(match.group(i)) for i in range(1, 5))
    return PreviewNote(index - 1, count, step, total, match.group(5))
