"""The preview arithmetic: which steps, what size, and the flow-matching x0 estimate."""

from __future__ import annotations

import pytest
import torch

from pipelines.previews import calibration_image, x0_estimate
from pipelines.sizes import ImageSize
from pipelines.types import preview_size, preview_steps


@pytest.mark.parametrize(
    ("total", "count", "steps"),
    [
        (8, 0, ()),
        (8, 1, (4,)),
        (8, 2, (3, 5)),
        (8, 3, (2, 4, 6)),
        (4, 3, (1, 2, 3)),
        (2, 3, (1,)),  # never the last step: the final image comes then
        (1, 2, ()),
        (28, 2, (9, 19)),
    ],
)
def test_preview_steps(total: int, count: int, steps: tuple[int, ...]) -> None:
    assert preview_steps(total, count) == steps


def test_a_preview_is_a_quarter_of_the_output() -> None:
    assert preview_size(ImageSize(1024, 768)) == (256, 192)
    assert preview_size(ImageSize(64, 64)) == (16, 16)


def test_x0_is_recovered_from_one_euler_step() -> None:
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 16, 8, generator=generator)
    noise = torch.randn(2, 16, 8, generator=generator)
    sigma, sigma_next = 0.6509, 0.4374
    noisy = (1 - sigma) * clean + sigma * noise
    velocity = noise - clean  # what a perfect flow-matching model predicts
    after = noisy + (sigma_next - sigma) * velocity  # the scheduler's Euler step
    assert torch.allclose(x0_estimate(noisy, after, sigma, sigma_next), clean, atol=1e-5)
    assert torch.equal(x0_estimate(noisy, after, 0.5, 0.5), after)


def test_the_calibration_picture_spans_the_colours() -> None:
    picture = calibration_image(64)
    assert picture.shape == (64, 64, 3)
    assert picture.min() == 0.0
    assert picture.max() == 1.0
