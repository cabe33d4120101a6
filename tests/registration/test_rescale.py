"""Any image size: observations brought to the U-Net's training scale, the camera following
(regtool/registration/rescale.py)."""

from __future__ import annotations

import numpy as np
import pytest

from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.registration.rescale import NetworkScale, network_view

SCALE = NetworkScale((160, 120), 40.0, 0.6)
# A box of +-5 cm: the size of the built-in objects.
BOX = np.array([[x, y, z] for x in (-0.05, 0.05) for y in (-0.05, 0.05) for z in (-0.05, 0.05)])


def ramp(width: int, height: int) -> np.ndarray:
    """An image whose red / green channels are the pixel centre's x / width, y / height."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([(xx + 0.5) / width, (yy + 0.5) / height, np.zeros_like(xx)], axis=2)


def test_training_size_at_training_scale_is_unchanged():
    camera = CameraIntrinsics.from_fov(160, 120, 40.0)
    image = ramp(160, 120)
    mask = image[..., 0] > 0.5
    for distance in (0.5, 0.6, 0.72):  # within the training views' distance jitter
        view = network_view(image, camera, Pose.look_at(distance, 30, 20), BOX, SCALE, mask)
        assert not view.resampled and view.camera == camera and view.warnings == ()
        assert view.image is image or np.array_equal(view.image, image)
        assert view.mask is mask


@pytest.mark.parametrize("size,distance", [((320, 240), 0.6), ((640, 480), 0.6),
                                           ((1280, 960), 0.6), ((640, 480), 1.1),
                                           ((160, 120), 0.35)])
def test_camera_follows_the_pixels(size, distance):
    """Every output pixel shows the original image where the new camera's ray meets it: the
    ray through output pixel (u, v) hits the original image at (u - cx') / fx' * fx + cx."""
    width, height = size
    camera = CameraIntrinsics.from_fov(width, height, 40.0)
    pose = Pose.look_at(distance, 60, 25)
    pose = Pose(pose.rotation, pose.translation + np.array([0.03, -0.02, 0.0]))
    view = network_view(ramp(width, height), camera, pose, BOX, SCALE)
    assert view.resampled and view.image.shape == (120, 160, 3)
    cam = view.camera
    assert (cam.width, cam.height) == (160, 120)
    # The object appears at the training scale: focal length / depth as in training.
    assert cam.fy / distance == pytest.approx(SCALE.pixels_per_radian() / 0.6, rel=0.02)
    vv, uu = np.mgrid[8:112:7, 8:152:7].astype(np.float64) + 0.5
    x = (uu - cam.cx) / cam.fx * camera.fx + camera.cx
    y = (vv - cam.cy) / cam.fy * camera.fy + camera.cy
    inside = (x > 1) & (x < width - 1) & (y > 1) & (y < height - 1)
    assert inside.mean() > 0.3  # at 0.35 m the 160x120 image fills a third of the window
    got = view.image[vv.astype(int), uu.astype(int)]
    # Ramp values agree to a fraction of an original pixel (bilinear, anti-aliased resampling).
    np.testing.assert_allclose(got[..., 0][inside], (x / width)[inside], atol=1.5 / width + 2e-3)
    np.testing.assert_allclose(got[..., 1][inside], (y / height)[inside],
                               atol=1.5 / height + 2e-3)


def test_window_is_centred_on_the_object():
    camera = CameraIntrinsics.from_fov(640, 480, 40.0)
    base = Pose.look_at(0.3, 0, 20)  # twice as close as in training: the image shrinks 2x
    pose = Pose(base.rotation, base.translation + np.array([0.05, 0.03, 0.0]))
    view = network_view(ramp(640, 480), camera, pose, BOX, SCALE)
    pts = BOX @ pose.rotation.T + pose.translation
    u = view.camera.fx * pts[:, 0] / pts[:, 2] + view.camera.cx
    v = view.camera.fy * pts[:, 1] / pts[:, 2] + view.camera.cy
    assert abs(0.5 * (u.min() + u.max()) - 80) < 2 and abs(0.5 * (v.min() + v.max()) - 60) < 2


def test_mask_is_resampled_with_the_image():
    camera = CameraIntrinsics.from_fov(640, 480, 40.0)
    image = ramp(640, 480)
    mask = image[..., 0] > 0.5  # right half
    view = network_view(image, camera, Pose.look_at(0.6, 0, 20), BOX, SCALE, mask)
    np.testing.assert_array_equal(view.mask, view.image[..., 0] > 0.5)


def test_warnings_for_small_and_cut_off_objects():
    camera = CameraIntrinsics.from_fov(160, 120, 40.0)
    far = network_view(ramp(160, 120), camera, Pose.look_at(2.0, 0, 20), BOX, SCALE)
    assert len(far.warnings) == 1 and "too small" in far.warnings[0]
    pose = Pose.look_at(0.6, 0, 20)
    edge = Pose(pose.rotation, pose.translation + np.array([0.25, 0.0, 0.0]))
    cut = network_view(ramp(640, 480), CameraIntrinsics.from_fov(640, 480, 40.0), edge, BOX,
                       SCALE)
    assert any("beyond the image's border" in w for w in cut.warnings), cut.warnings
    big = network_view(ramp(1280, 960), CameraIntrinsics.from_fov(1280, 960, 40.0), pose, BOX,
                       SCALE)
    assert big.warnings == ()


@pytest.mark.gl
def test_a_larger_photo_of_the_same_scene_becomes_the_training_size_view(dataset_dir):
    """The evaluation's observation of a test bottle rendered at 160x120 and at 640x480 (same
    field of view, the same scene): the 640x480 one brought to the network's scale matches the
    160x120 one to about 1.5 grey levels in 100, and its camera is the 160x120 camera."""
    from regtool.data.dataset import load_category
    from regtool.evaluation.run import instance_rng, observe_instance_shaded

    mesh = load_category(dataset_dir, "bottle").test[0].mesh
    views = {}
    for w, h in ((160, 120), (640, 480)):
        camera = CameraIntrinsics.from_fov(w, h, 40.0)
        pose, shaded, _ = observe_instance_shaded(instance_rng(0, "bottle", 0), mesh, 1.0,
                                                  camera, 0.6, (160, 120))
        views[w] = network_view(shaded.rgb, camera, pose, np.asarray(mesh.vertices), SCALE,
                                shaded.alpha >= 0.5)
    small, big = views[160], views[640]
    assert not small.resampled and big.resampled and big.scale == (0.25, 0.25)
    assert big.camera == small.camera
    assert np.abs(big.image - small.image).mean() < 0.015
    iou = (big.mask & small.mask).sum() / (big.mask | small.mask).sum()
    assert iou > 0.95, iou
