"""Cameras and poses: pinhole intrinsics, the GL projection, look-at poses, rotations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from regtool.geometry.camera import CameraIntrinsics, Pose, axis_angle_to_matrix, skew


def _project(camera: CameraIntrinsics, points_cam: np.ndarray) -> np.ndarray:
    uvw = points_cam @ camera.matrix().T
    return uvw[:, :2] / uvw[:, 2:]


def test_from_fov_sees_exactly_its_field_of_view():
    cam = CameraIntrinsics.from_fov(160, 120, 40.0)
    half = math.tan(math.radians(20.0))
    # Points on the top and bottom edge of the field of view project onto the image border.
    uv = _project(cam, np.array([[0.0, -half, 1.0], [0.0, half, 1.0], [0.0, 0.0, 2.0]]))
    np.testing.assert_allclose(uv, [[80.0, 0.0], [80.0, 120.0], [80.0, 60.0]], atol=1e-9)


def test_scaled_camera_projects_to_scaled_pixels():
    cam = CameraIntrinsics(fx=150.0, fy=160.0, cx=70.0, cy=55.0, width=160, height=120)
    big = cam.scaled(640, 480)
    pts = np.array([[0.1, -0.05, 0.7], [-0.02, 0.03, 0.5]])
    np.testing.assert_allclose(_project(big, pts), 4.0 * _project(cam, pts), atol=1e-9)


def test_gl_projection_agrees_with_the_pinhole():
    """A camera-frame point (OpenCV: y down, z forward) mapped to GL's frame (y up, z back),
    projected and viewport-transformed lands on the pixel K gives (GL's y counts upwards)."""
    cam = CameraIntrinsics(fx=150.0, fy=160.0, cx=70.0, cy=55.0, width=160, height=120)
    p_cv = np.array([0.03, -0.02, 0.6])
    clip = cam.gl_projection() @ np.array([p_cv[0], -p_cv[1], -p_cv[2], 1.0])
    ndc = clip[:3] / clip[3]
    u = (ndc[0] + 1.0) / 2.0 * cam.width
    v = (1.0 - (ndc[1] + 1.0) / 2.0) * cam.height
    np.testing.assert_allclose([u, v], _project(cam, p_cv[None])[0], atol=1e-9)


@pytest.mark.parametrize("azimuth, elevation", [(0.0, 0.0), (30.0, 20.0), (200.0, -35.0)])
def test_look_at_puts_the_target_on_the_optical_axis(azimuth, elevation):
    target = np.array([0.01, -0.02, 0.05])
    pose = Pose.look_at(0.6, azimuth, elevation, target=target)
    np.testing.assert_allclose(pose.rotation @ target + pose.translation, [0, 0, 0.6],
                               atol=1e-12)
    np.testing.assert_allclose(pose.rotation @ pose.rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(pose.rotation) == pytest.approx(1.0)
    # The object's up axis (+z) points up in the image (-y in the camera frame) unless seen
    # from straight above or below.
    assert (pose.rotation @ np.array([0.0, 0.0, 1.0]))[1] < 0


def test_axis_angle_matches_scipy_and_skew_is_the_cross_product():
    rng = np.random.default_rng(0)
    for rotvec in [np.zeros(3), rng.normal(size=3), np.array([0.0, 0.0, math.pi - 1e-6])]:
        ours = axis_angle_to_matrix(torch.as_tensor(rotvec, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(ours, Rotation.from_rotvec(rotvec).as_matrix(), atol=1e-9)
    a, b = torch.as_tensor(rng.normal(size=3)), torch.as_tensor(rng.normal(size=3))
    np.testing.assert_allclose((skew(a) @ b).numpy(), torch.linalg.cross(a, b).numpy(),
                               atol=1e-12)


def test_compose_rotates_about_the_object_origin_and_round_trips_json():
    pose = Pose.look_at(0.6, 30.0, 20.0)
    moved = pose.compose(np.array([0.0, 0.1, 0.0]), np.array([0.01, 0.0, 0.0]))
    # The object origin moves by the translation increment only.
    np.testing.assert_allclose(moved.translation - pose.translation, [0.01, 0.0, 0.0])
    angle = Rotation.from_matrix(moved.rotation @ pose.rotation.T).magnitude()
    assert angle == pytest.approx(0.1)
    back = Pose.from_dict(moved.to_dict())
    np.testing.assert_array_equal(back.rotation, moved.rotation)
    np.testing.assert_array_equal(back.translation, moved.translation)
    cam = CameraIntrinsics.from_fov(160, 120, 40.0)
    assert CameraIntrinsics.from_dict(cam.to_dict()) == cam
