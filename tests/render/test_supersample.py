"""Anti-aliasing by supersampling (`diff_render_supersampled`): block averages of a larger
rendering, gradients through the average, batched like `diff_render`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from render_testlib import small_camera

from regtool.render.diff import DiffRenderSettings, diff_render, diff_render_supersampled

pytestmark = pytest.mark.gl


def test_supersampling_averages_blocks_of_the_larger_rendering(ellipsoid):
    camera = small_camera(40, 32)
    v = torch.as_tensor(np.asarray(ellipsoid.vertices)) + torch.tensor([0.0, 0.0, 0.45])
    settings = DiffRenderSettings(image_type="rgb")
    plain = diff_render(v, ellipsoid.faces, camera, settings)
    one = diff_render_supersampled(v, ellipsoid.faces, camera, settings, 1)
    assert torch.equal(plain[0], one[0]) and torch.equal(plain[1], one[1])
    image, mask = diff_render_supersampled(v, ellipsoid.faces, camera, settings, 3)
    big, big_mask = diff_render(v, ellipsoid.faces, camera.scaled(120, 96), settings)
    assert image.shape == (3, 32, 40) and mask.shape == (32, 40) and mask.dtype == torch.bool
    assert torch.allclose(image[:, 5, 7], big[:, 15:18, 21:24].mean((1, 2)))
    coverage = big_mask.double().reshape(32, 3, 40, 3).mean((1, 3))
    assert torch.equal(mask, coverage >= 0.5)
    # Edge pixels are partly covered: anti-aliased values strictly between the two sides.
    edge = (coverage > 0) & (coverage < 1)
    assert edge.any() and not torch.equal(image, plain[0])


def test_supersampled_gradients_and_batches(ellipsoid):
    camera = small_camera(40, 32)
    v = torch.as_tensor(np.asarray(ellipsoid.vertices)) + torch.tensor([0.0, 0.0, 0.45])
    batch = torch.stack([v, v + torch.tensor([0.01, 0.0, 0.0]).double()]).requires_grad_(True)
    images, masks = diff_render_supersampled(batch, ellipsoid.faces, camera, factor=2)
    assert images.shape == (2, 3, 32, 40) and masks.shape == (2, 32, 40)
    (images ** 2).sum().backward()
    for b in range(2):
        x = batch[b].detach().clone().requires_grad_(True)
        image, mask = diff_render_supersampled(x, ellipsoid.faces, camera, factor=2)
        assert torch.equal(image, images[b].detach()) and torch.equal(mask, masks[b])
        (image ** 2).sum().backward()
        assert x.grad.abs().sum() > 0
        assert torch.allclose(x.grad, batch.grad[b], atol=1e-6)
