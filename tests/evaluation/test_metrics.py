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
