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
#
# Why the mean of the gradient along the step and not the gradient at z0: the loss has kinks at
# sub-pixel scale. Anti-aliasing by supersampling is a box filter, so the loss is piecewise
# linear in an edge's position within a pixel, and its slope jumps where the edge enters the
# next pixel by the jump of dL/dI between the two pixels, which for a U-Net alternates in sign
# across the silhouette. Measured (session 14) with a 400-step tiny U-Net: at the canonical code
# the bottle's top edge lies 0.09 px from a pixel boundary; along component 0 the loss's slope is
# the analytic gradient's (-0.057) on one side and 8x steeper from 0.01 std on the other, so
# the central difference over +-0.1 std (-0.21) is no derivative at z0 (ratio 0.33 there). The
# secant equals the mean of the derivative over the step, kinks or not (fundamental theorem of
# calculus), which checks the gradient at every sampled point. At 3x supersampling the
# reference itself is a staircase (a step per row of 1/3 px; at +-0.1 std the top edge moves
# about one pixel), so it is rendered at 8x.
SUPERSAMPLE, STEP, POINTS = 8, 0.1, 20  # FD step in standard deviations of each component


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
        rendered, _ = diff_render_supersampled(vertices.float(), faces, camera, settings,
                                               SUPERSAMPLE)
        return loss(rendered[None, :3], image, region)

    z0 = torch.tensor(np.asarray(space.canonical_code), dtype=torch.float64)
    std = np.sqrt(np.asarray(space.explained_variance))
    # Per standard deviation of each component j: the mean analytic dL/dz_j at the midpoints
    # of POINTS equal parts of [z0 - STEP, z0 + STEP] along j, and the central difference.
    analytic, numeric = np.zeros(len(std)), np.zeros(len(std))
    offsets = ((np.arange(POINTS) + 0.5) / POINTS * 2.0 - 1.0) * STEP
    for j in range(len(std)):
        direction = torch.zeros(len(std), dtype=torch.float64)
        direction[j] = std[j]
        for offset in offsets:
            z = (z0 + offset * direction).requires_grad_(True)
            loss_at(z).backward()
            analytic[j] += float(z.grad[j]) * std[j] / POINTS
        with torch.no_grad():
            plus = float(loss_at(z0 + STEP * direction))
            minus = float(loss_at(z0 - STEP * direction))
        numeric[j] = (plus - minus) / (2.0 * STEP)
    cosine = analytic @ numeric / (np.linalg.norm(analytic) * np.linalg.norm(numeric))
    ratio = np.linalg.norm(analytic) / np.linalg.norm(numeric)
    # Measured (session 14, the tiny U-Net of tests/conftest.py): features+mask cosine 1.000,
    # ratio 1.00; features cosine 0.967, ratio 0.84 (the min and max of the normalisation are
    # constants in the backward, so part of the change is not seen). The features ratio depends
    # on the network: 1.98 / 1.10 / 0.70 with `--seed 0/1/2`, 0.39 / 0.48 after 600 steps
    # (seeds 3 / 0); with the min and max held fixed in the loss too it is 1.08 / 0.97 (seeds
    # 0 / 2). features+mask passed with each of them (ratio 0.90-1.04 for seeds 0-2).
    assert cosine > min_cosine, (cosine, analytic, numeric)
    assert ratio_range[0] < ratio < ratio_range[1], (ratio, analytic, numeric)
