"""Step previews for FLUX.2: a cheap RGB picture of where an image is heading, mid-run.

The model predicts a velocity ``v`` at each step; with flow matching the estimate of the final
latent is ``x0 = x_t - sigma * v``. The Euler step the scheduler takes is
``x_next = x_t + (sigma_next - sigma) * v``, so ``x0`` follows from the latents before and after
the step alone, without touching the step itself:
``x0 = x_t - sigma * (x_next - x_t) / (sigma_next - sigma)``.

The estimate is turned into pixels by a linear map from the VAE's 32 latent channels to RGB (no
VAE decode): it is fitted once per VAE, the first time a preview is asked for, by least squares
between a calibration picture and its own VAE encoding (one small encode). A preview costs a few
tensor operations on the latent grid (1/8 of the output's sides), a copy to the CPU, and a resize
to a quarter of the output's sides; ``benchmarks/bench_previews.py`` measures it. Requests without
previews pay nothing: the engine calls nothing here unless a request of the batch asked.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from diffusers.pipelines.flux2.pipeline_flux2 import retrieve_latents
from PIL import Image

from pipelines.sizes import ImageSize
from pipelines.types import preview_size

CALIBRATION_SIDE = 256
_projections: weakref.WeakKeyDictionary[Any, tuple[torch.Tensor, torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def x0_estimate(
    before: torch.Tensor, after: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """The flow-matching estimate of the clean latents, from one Euler step (see above)."""
    if sigma_next == sigma:
        return after
    return before - sigma * (after - before) / (sigma_next - sigma)


def calibration_image(side: int = CALIBRATION_SIDE) -> np.ndarray:
    """A picture with every hue and brightness: gradients across, coloured blocks on top."""
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    red, green = np.meshgrid(ramp, ramp)
    blue = 1.0 - (red + green) / 2
    image = np.stack([red, green, blue], axis=-1)
    block = side // 8
    colours = [
        (1, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
        (1, 1, 0),
        (0, 1, 1),
        (1, 0, 1),
        (0, 0, 0),
        (1, 1, 1),
    ]
    for i, colour in enumerate(colours):
        y, x = (i // 4) * 2 * block + block, (i % 4) * 2 * block
        image[y : y + block, x : x + block] = colour
    return image


def projection(pipe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent-to-RGB map of ``pipe``'s VAE (weights ``[C, 3]``, bias ``[3]``), fitted once."""
    vae = pipe.vae
    with _lock:
        cached = _projections.get(vae)
        if cached is not None:
            return cached
        device = next(vae.parameters()).device
        pixels = torch.from_numpy(calibration_image()).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            latents = retrieve_latents(
                vae.encode(pixels.to(device, vae.dtype)), sample_mode="argmax"
            ).float()
        target = F.adaptive_avg_pool2d(pixels.to(device), latents.shape[-2:])
        inputs = latents.flatten(2)[0].T  # [h*w, C]
        inputs = torch.cat([inputs, torch.ones_like(inputs[:, :1])], dim=1)
        fit = torch.linalg.lstsq(inputs.cpu(), target.flatten(2)[0].T.cpu()).solution.to(device)
        cached = _projections[vae] = (fit[:-1], fit[-1])
        return cached


def render(
    pipe: Any,
    latents: torch.Tensor,
    latent_ids: torch.Tensor,
    sizes: list[ImageSize],
) -> list[Image.Image]:
    """RGB previews of packed ``latents`` rows (``[n, tokens, 128]``, with their position ids),
    each resized to :func:`preview_size` of its output size."""
    weights, bias = projection(pipe)
    grid = pipe._unpack_latents_with_ids(latents, latent_ids)
    bn = pipe.vae.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(grid.device, grid.dtype)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
    grid = pipe._unpatchify_latents(grid * std.to(grid.device, grid.dtype) + mean).float()
    rgb = torch.einsum("nchw,cd->ndhw", grid, weights) + bias.view(1, 3, 1, 1)
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return [
        Image.fromarray(array).resize(preview_size(size), Image.Resampling.BILINEAR)
        for array, size in zip(pixels.cpu().numpy(), sizes, strict=True)
    ]
