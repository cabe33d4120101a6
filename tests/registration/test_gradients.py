"""dL/dz through the whole chain — shape space, pose, the differentiable renderer (its
image-gradient backward), the U-Net and the image comparison — against central finite
differences of the same loss (the claim of the comment in features/compare.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

pytestmark = pytest.mark.gl

W, H = 128, 96  # the tiny U-Net's training size (tests/conftest.py)


@pytest.fixture(scope="module")
def setup(bottle_artifacts, tiny_unet):
    from regtool.features.unet import load_unet
    from regtool.geometry.camera import CameraIntrinsics, Pose
    from regtool.render.shading import Material, render_shaded
    from regtool.shapespace.space import ShapeSpace

    space = ShapeSpace.load(bottle_artifacts["shapespace"])
    unet = load_unet(tiny_unet[0], "cpu")[0]
    camera = CameraIntrinsics.from_fov(W, H, 40.0)
    pose = Pose.look_at(0.45, azimuth_deg=30.0, elevation_deg=15.0)
    # Observed: a training instance of another shape, red over grey.
    observed = render_shaded(space.deform_numpy(space.train_codes[3]), space.faces, pose,
                             camera, Material((0.8, 0.3, 0.2)), background=0.5)
    return space, unet, camera, pose, observed


# The paper's comparison alone agrees less well: its min-max normalised feature maps change
# with every pixel (features/compare.py quotes cosines 0.7-0.97 at 320x240).
@pytest.mark.parametrize("kind, min_cosine, ratio_range", [
    ("features", 0.7, (0.5, 1.5)), ("features+mask", 0.95, (0.75, 1.33))])
def test_latent_gradient_matches_central_differences(setup, kind, min_cosine, ratio_range):
    from regtool.features.compare import FeatureLoss
    from regtool.render.diff import DiffRenderSettings, diff_render_supersampled

    space, unet, camera, pose, observed = setup
    torch.set_num_threads(1)
    image = torch.from_numpy(np.ascontiguousarray(observed.rgb)).permute(2, 0, 1)[None].float()
    region = torch.from_numpy(ndimage.binary_dilation(observed.mask, iterations=8))[None, None]
    loss = FeatureLoss(unet, kind)
    faces = torch.tensor(space.faces, dtype=torch.int64)
    rotation = torch.as_tensor(pose.rotation)
    translation = torch.as_tensor(pose.translation)
    settings = DiffRenderSettings(image_type="rgb")

    def loss_at(z: torch.Tensor) -> torch.Tensor:
        vertices = space.deform(z) @ rotation.T + translation
        rendered, _ = diff_render_supersampled(vertices.float(), faces, camera, settings, 3)
        return loss(rendered[None, :3], image, region)

    z0 = torch.tensor(np.asarray(space.canonical_code), dtype=torch.float64)
    z = z0.clone().requires_grad_(True)
    loss_at(z).backward()
    std = np.sqrt(np.asarray(space.explained_variance))
    analytic = z.grad.numpy() * std  # per standard deviation of each component
    numeric = np.zeros_like(analytic)
    for j in range(len(std)):
        step = np.zeros(len(std))
        step[j] = 0.1 * std[j]
        with torch.no_grad():
            plus = float(loss_at(z0 + torch.as_tensor(step)))
            minus = float(loss_at(z0 - torch.as_tensor(step)))
        numeric[j] = (plus - minus) / 0.2
    cosine = analytic @ numeric / (np.linalg.norm(analytic) * np.linalg.norm(numeric))
    ratio = np.linalg.norm(analytic) / np.linalg.norm(numeric)
    # Measured (a 400-step U-Net at 128x96): features+mask cosine 0.998, ratio 1.14;
    # features cosine 0.80, ratio 0.75 (the min and max of the normalisation are constants in
    # the backward, so part of the change is not seen).
    assert cosine > min_cosine, (cosine, analytic, numeric)
    assert ratio_range[0] < ratio < ratio_range[1], (ratio, analytic, numeric)
