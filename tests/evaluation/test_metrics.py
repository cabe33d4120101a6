"""The Table-1 metric: distance from each evaluation point to the nearest mesh vertex."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from regtool.errors import MeshError
from regtool.evaluation.metrics import distance_stats, point_to_mesh_vertex_distances, pose_error
from regtool.geometry.camera import Pose


def test_matches_brute_force():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 3))
    vertices = rng.normal(size=(500, 3))
    d = point_to_mesh_vertex_distances(points, vertices)
    brute = np.linalg.norm(points[:, None, :] - vertices[None, :, :], axis=2).min(axis=1)
    assert d.shape == (300,) and d.dtype == np.float64
    np.testing.assert_allclose(d, brute, rtol=0, atol=1e-12)


def test_vertex_distance_not_surface_distance():
    # A point on the middle of a big triangle is far from every vertex although it lies on the
    # surface: the metric is to vertices, as in the paper.
    vertices = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    centroid = vertices.mean(axis=0, keepdims=True)
    d = point_to_mesh_vertex_distances(centroid, vertices)
    assert d[0] == pytest.approx(np.linalg.norm(centroid[0]))
    assert point_to_mesh_vertex_distances(vertices, vertices).max() == 0.0


def test_stats_and_units_follow_inputs():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    # Evaluation points on a sphere 2 mm larger: every distance is at least 2 mm.
    points = np.asarray(sphere.vertices) * (0.052 / 0.05)
    stats = distance_stats(points, sphere.vertices)
    assert set(stats) == {"mean", "std", "median", "max"}
    assert stats["mean"] == pytest.approx(0.002, rel=1e-9)
    assert stats["std"] == pytest.approx(0.0, abs=1e-12)
    in_mm = distance_stats(points * 1000.0, np.asarray(sphere.vertices) * 1000.0)
    assert in_mm["mean"] == pytest.approx(2.0, rel=1e-9)
    # A scaled (worse) "deformation" has a larger error than the true shape.
    worse = distance_stats(points, np.asarray(sphere.vertices) * 0.8)
    assert worse["mean"] > stats["mean"] and worse["max"] >= worse["median"]


@pytest.mark.parametrize("points, vertices", [
    (np.zeros((0, 3)), np.zeros((4, 3))),
    (np.zeros((4, 3)), np.zeros((0, 3))),
    (np.zeros((4, 2)), np.zeros((4, 3))),
    (np.array([[0.0, np.nan, 0.0]]), np.zeros((4, 3))),
    (np.zeros((4, 3)), np.array([[np.inf, 0.0, 0.0]])),
])
def test_bad_input_is_mesh_error(points, vertices):
    with pytest.raises(MeshError):
        point_to_mesh_vertex_distances(points, vertices)


def test_pose_error_angle_and_distance():
    truth = Pose.look_at(0.6, azimuth_deg=30.0, elevation_deg=20.0)
    same = pose_error(truth, truth)
    assert same["rotation_deg"] == pytest.approx(0.0, abs=1e-5)
    assert same["translation"] == pytest.approx(0.0, abs=1e-12)
    # 12 degrees about a tilted axis through the object origin, then 3 cm along x and 4 along y.
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    moved = truth.compose(np.radians(12.0) * axis, np.array([0.03, 0.04, 0.0]))
    err = pose_error(moved, truth)
    assert err["rotation_deg"] == pytest.approx(12.0, abs=1e-6)
    assert err["translation"] == pytest.approx(0.05, abs=1e-12)
    assert pose_error(truth, moved)["rotation_deg"] == pytest.approx(12.0, abs=1e-6)


def _rot(axis, degrees):
    from scipy.spatial.transform import Rotation

    a = np.asarray(axis, float)
    return Rotation.from_rotvec(np.radians(degrees) * a / np.linalg.norm(a)).as_matrix()


class _Sym:
    axis = (0.0, 0.0, 1.0)
    point = (0.01, -0.02, 0.05)


def test_symmetric_pose_error_ignores_the_rotation_about_the_axis():
    """A rotation of 40 degrees about the symmetry axis (through its point) is no error for a
    symmetric category; the full angle is still reported beside it."""
    truth = Pose(_rot([0.3, -0.5, 0.8], 70.0), np.array([0.02, -0.01, 0.6]))
    c = np.asarray(_Sym.point)
    spin = _rot(_Sym.axis, 40.0)
    # x -> R (S (x - c) + c) + t
    est = Pose(truth.rotation @ spin, truth.translation + truth.rotation @ (c - spin @ c))
    err = pose_error(est, truth, _Sym())
    assert err["rotation_deg"] < 1e-6 and err["translation"] < 1e-9
    assert err["rotation_full_deg"] == pytest.approx(40.0)
    plain = pose_error(est, truth)
    assert plain["rotation_deg"] == pytest.approx(40.0) and plain["translation"] > 0.001


def test_symmetric_pose_error_counts_the_axis_tilt():
    """A tilt of 5 degrees of the axis (about an axis perpendicular to it) on top of the spin
    is 5 degrees of error; a translation adds its length."""
    truth = Pose(_rot([1.0, 2.0, 0.5], 50.0), np.array([0.0, 0.0, 0.6]))
    est_rot = truth.rotation @ _rot([1.0, 0.0, 0.0], 5.0) @ _rot(_Sym.axis, 25.0)
    err = pose_error(Pose(est_rot, truth.translation), truth, _Sym())
    assert err["rotation_deg"] == pytest.approx(5.0, abs=1e-6)
    shifted = pose_error(Pose(truth.rotation, truth.translation + [0.003, 0.0, 0.0]), truth,
                         _Sym())
    assert shifted["rotation_deg"] < 1e-6
    assert shifted["translation"] == pytest.approx(0.003, abs=1e-9)


def test_symmetric_truth_is_the_closest_equivalent():
    """symmetric_truth returns R_true Rot(a, theta) with the smallest angle to the estimate
    among all theta (checked against a 0.5 degree grid)."""
    from regtool.correspondence.field import symmetric_truth

    rng = np.random.default_rng(1)
    axis = np.array([0.2, 0.9, -0.3])
    for _ in range(5):
        r_true = _rot(rng.normal(size=3), rng.uniform(0, 180))
        r_est = _rot(rng.normal(size=3), rng.uniform(0, 180))
        best = symmetric_truth(r_true, r_est, axis)
        rel = best.T @ r_true  # a rotation about the axis
        np.testing.assert_allclose(rel @ (axis / np.linalg.norm(axis)),
                                   axis / np.linalg.norm(axis), atol=1e-9)

        def angle(r, r_est=r_est):
            return np.degrees(np.arccos(np.clip((np.trace(r @ r_est.T) - 1) / 2, -1, 1)))

        grid = min(angle(r_true @ _rot(axis, t)) for t in np.arange(0.0, 360.0, 0.5))
        assert angle(best) <= grid + 1e-6
