"""The registration error of the paper's Table 1 (StilllebenDR, Sec. 4.2).

For every point of a test instance's evaluation point set, the L2 distance to the nearest
*vertex* (not the nearest surface point) of the deformed canonical mesh; a row of the table is
the mean and the standard deviation of these distances over the points of one instance.
Distances are in the units of the inputs (the dataset's units, metres for the built-in data).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from regtool.geometry.mesh import validate_points


def point_to_mesh_vertex_distances(points: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Return (N,) float64: for each evaluation point (N, 3) the Euclidean distance to the
    nearest of the mesh vertices (M, 3), in the inputs' units (both in the same frame and units).

    MeshError if either array is empty, mis-shaped or non-finite.
    """
    pts = validate_points(points, "evaluation points")
    verts = validate_points(vertices, "mesh vertices")
    distances, _ = cKDTree(verts).query(pts, k=1)
    return np.asarray(distances, dtype=np.float64)


def distance_stats(points: np.ndarray, vertices: np.ndarray) -> dict[str, float]:
    """Return {"mean", "std", "median", "max"} (floats, inputs' units) of
    `point_to_mesh_vertex_distances(points, vertices)`; std is the population std (ddof=0)."""
    d = point_to_mesh_vertex_distances(points, vertices)
    return {"mean": float(d.mean()), "std": float(d.std()), "median": float(np.median(d)),
            "max": float(d.max())}


def pose_error(estimate, truth, symmetry=None) -> dict[str, float]:
    """Return {"rotation_deg", "translation", "rotation_full_deg"}: the angle (degrees) of the
    relative rotation R_est R_true^T and the distance between the translations (the poses'
    units, metres for `geometry.camera.Pose`) of two object -> camera poses (objects with
    `rotation` (3, 3) and `translation` (3,)).

    symmetry: None, or an object with `axis` (3,) and `point` (3,) (object frame, the poses'
    units; e.g. `data.manifest.Symmetry`) of a rotationally symmetric category. No image shows
    a rotation about that axis, so then "rotation_deg" is the tilt of the axis (the angle
    between R_est a and R_true a) and "translation" is measured against the truth turned about
    the axis to the equivalent closest to the estimate. "rotation_full_deg" is always the full
    angle."""
    r_est, r_true = np.asarray(estimate.rotation, float), np.asarray(truth.rotation, float)
    t_est, t_true = (np.asarray(estimate.translation, float),
                     np.asarray(truth.translation, float))
    full = _angle_deg(r_est @ r_true.T)
    if symmetry is None:
        return {"rotation_deg": full, "translation": float(np.linalg.norm(t_est - t_true)),
                "rotation_full_deg": full}
    from regtool.correspondence.field import symmetric_truth

    axis = np.asarray(symmetry.axis, float)
    axis = axis / np.linalg.norm(axis)
    point = np.asarray(symmetry.point, float)
    a_est, a_true = r_est @ axis, r_true @ axis
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(np.cross(a_est, a_true)),
                                       a_est @ a_true)))
    # The equivalent truth: x -> R_true (Rot(a, theta) (x - c) + c) + t_true.
    r_equiv = symmetric_truth(r_true, r_est, axis)
    t_equiv = t_true + r_true @ point - r_equiv @ point
    return {"rotation_deg": tilt, "translation": float(np.linalg.norm(t_est - t_equiv)),
            "rotation_full_deg": full}


def _angle_deg(rotation: np.ndarray) -> float:
    """Return the rotation angle (degrees) of a rotation matrix (3, 3)."""
    cos = (np.trace(rotation) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
