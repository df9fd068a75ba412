"""What the load test sends: built-in request mixes or a JSON-lines request file.

Built-in mixes (``--mix``; combine with weights, e.g. ``edit-1ref:3,t2i:1``):

=============  ===========================  ============================================
name           endpoint                     input
=============  ===========================  ============================================
``edit-1ref``  ``fal-ai/flux-2/flash/edit``  one 1024x1024 reference
``edit-3ref``  ``fal-ai/flux-2/flash/edit``  three 1024x1024 references
``t2i``        ``fal-ai/flux-2/flash``       text to image (no ``image_urls``)
``edit-4img``  ``fal-ai/flux-2/flash/edit``  one reference, ``num_images: 4``
=============  ===========================  ============================================

References are drawn deterministically with PIL (gradients and shapes, different per index) and
sent as ``data:`` PNG URIs, so nothing is uploaded first. They compress well (about 20 KB each),
so uploads are lighter than with photos: a request file with your own images measures that.
Prompts cycle through a fixed list and request *i* gets seed ``seed + i``, so two runs send the
same requests in the same order.

A request file holds one JSON object per line: either an input (sent to ``--endpoint``) or
``{"endpoint": "...", "input": {...}}``. Its lines are sent in order, round and round.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

EDIT_ENDPOINT = "fal-ai/flux-2/flash/edit"
T2I_ENDPOINT = "fal-ai/flux-2/flash"
REFERENCE_SIDE = 1024
SIZE_PRESETS = frozenset(
    {"square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"}
)
EDIT_PROMPTS = (
    "paint the car #FF5733 and keep the background",
    "turn the scene into a watercolour painting",
    "add falling snow",
    "make it look like a sunset",
    "replace the sky with a starry night",
    "make the shapes look like they are made of glass",
    "add a small red kite in the top left corner",
    "render it as a pencil sketch",
)
T2I_PROMPTS = (
    "a red bicycle leaning on a blue wall, morning light",
    "a bowl of ramen on a wooden table, top view",
    "a lighthouse on a cliff in a storm",
    "a glass teapot with flowers blooming inside",
)


@dataclass(frozen=True)
class Mix:
    """A kind of request: its endpoint, references, output count and prompts."""

    name: str
    endpoint: str
    references: int
    num_images: int
    prompts: Sequence[str]


MIXES: dict[str, Mix] = {
    mix.name: mix
    for mix in (
        Mix("edit-1ref", EDIT_ENDPOINT, 1, 1, EDIT_PROMPTS),
        Mix("edit-3ref", EDIT_ENDPOINT, 3, 1, EDIT_PROMPTS),
        Mix("t2i", T2I_ENDPOINT, 0, 1, T2I_PROMPTS),
        Mix("edit-4img", EDIT_ENDPOINT, 1, 4, EDIT_PROMPTS),
    )
}


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: where, what, and which mix (or file line) it came from."""

    mix: str
    endpoint: str
    arguments: Mapping[str, Any]


@lru_cache(maxsize=8)
def reference_uri(index: int, side: int = REFERENCE_SIDE) -> str:
    """A deterministic ``side``x``side`` PNG as a ``data:`` URI; each ``index`` looks different."""
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    hue = (index * 97) % 256
    tint = Image.new("RGB", (side, side), (hue, 255 - hue, (hue * 3) % 256))
    image = Image.blend(image, tint, 0.5)
    draw = ImageDraw.Draw(image)
    rng = random.Random(f"reference:{index}")
    for _ in range(6):
        x, y = rng.randrange(side), rng.randrange(side)
        r = rng.randrange(side // 16, side // 4)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_image_size(text: str) -> str | dict[str, int]:
    """A fal preset name, or ``WIDTHxHEIGHT`` as fal's ``{"width", "height"}``."""
    if text in SIZE_PRESETS:
        return text
    width, sep, height = text.lower().partition("x")
    if sep and width.isdigit() and height.isdigit():
        return {"width": int(width), "height": int(height)}
    raise ValueError(f"image size {text!r}: use {', '.join(sorted(SIZE_PRESETS))} or WxH")


def parse_mix(text: str) -> list[tuple[Mix, float]]:
    """``edit-1ref`` or ``edit-1ref:3,t2i:1`` into (mix, weight) pairs."""
    chosen = []
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        if name not in MIXES:
            raise ValueError(f"unknown mix {name!r}: choose from {', '.join(MIXES)}")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"mix weight {weight!r} is not a number") from None
        if value <= 0:
            raise ValueError(f"mix weight of {name} must be positive")
        chosen.append((MIXES[name], value))
    return chosen


class RequestSource:
    """The request for index *i*, the same on every run with the same settings.

    Args:
        mixes: built-in mixes with weights (ignored when ``lines`` is given).
        lines: request-file entries as ``(endpoint or None, input)``.
        endpoint: overrides every request's endpoint (the default one for file lines without).
        image_size: sets ``image_size`` on every request (a preset or ``{"width", "height"}``).
        extra: merged into every input (e.g. ``{"output_format": "jpeg"}``).
        seed: request *i* of the built-in mixes gets ``seed + i``; also picks mixes.
    """

    def __init__(
        self,
        *,
        mixes: Sequence[tuple[Mix, float]] = (),
        lines: Sequence[tuple[str | None, Mapping[str, Any]]] = (),
        endpoint: str | None = None,
        image_size: str | dict[str, int] | None = None,
        extra: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        if not mixes and not lines:
            raise ValueError("nothing to send: give a mix or a request file")
        self._mixes = list(mixes)
        self._lines = list(lines)
        self._endpoint = endpoint
        self._image_size = image_size
        self._extra = dict(extra or {})
        self._seed = seed
        for mix, _ in self._mixes:  # draw the references now, not while the clock runs
            for k in range(mix.references):
                reference_uri(k)

    def spec(self, index: int, *, warmup: bool = False) -> RequestSpec:
        """Request ``index`` of the measured phase, or warm-up request ``index``."""
        tag = "warmup" if warmup else "measured"
        if self._lines:
            endpoint, arguments = self._lines[index % len(self._lines)]
            name = f"file:{index % len(self._lines) + 1}"
            body = dict(arguments)
            endpoint = self._endpoint or endpoint or EDIT_ENDPOINT
        else:
            rng = random.Random(f"{self._seed}:{tag}:{index}")
            mix = rng.choices([m for m, _ in self._mixes], [w for _, w in self._mixes])[0]
            name, endpoint, body = mix.name, self._endpoint or mix.endpoint, _mix_input(mix, index)
            body["seed"] = self._seed + index
        if self._image_size is not None:
            body["image_size"] = self._image_size
        body.update(self._extra)
        return RequestSpec(mix=name, endpoint=endpoint, arguments=body)

    def describe(self) -> dict[str, Any]:
        """For the result file."""
        return {
            "mix": [[m.name, w] for m, w in self._mixes] if not self._lines else None,
            "request_file_lines": len(self._lines) or None,
            "endpoint": self._endpoint,
            "image_size": self._image_size,
            "extra": self._extra,
            "seed": self._seed,
        }


def _mix_input(mix: Mix, index: int) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": mix.prompts[index % len(mix.prompts)]}
    if mix.references:
        body["image_urls"] = [reference_uri(k) for k in range(mix.references)]
    if mix.num_images != 1:
        body["num_images"] = mix.num_images
    return body


def load_request_file(path: Path) -> list[tuple[str | None, dict[str, Any]]]:
    """The entries of a JSON-lines request file (blank lines and ``#`` comments skipped)."""
    entries: list[tuple[str | None, dict[str, Any]]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        if "input" in data:
            endpoint, body = data.get("endpoint"), data["input"]
            if not isinstance(body, dict) or not (endpoint is None or isinstance(endpoint, str)):
                raise ValueError(f"{path}:{number}: 'input' must be an object, 'endpoint' text")
            entries.append((endpoint, body))
        else:
            entries.append((None, data))
    if not entries:
        raise ValueError(f"{path}: no requests in it")
    return entries
