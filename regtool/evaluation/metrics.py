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


def pose_error(estimate, truth) -> dict[str, float]:
    """Return {"rotation_deg", "translation"}: the angle (degrees) of the relative rotation
    R_est R_true^T and the distance between the translations (the poses' units, metres for
    `geometry.camera.Pose`) of two object -> camera poses (objects with `rotation` (3, 3) and
    `translation` (3,)). For an object with a symmetry axis the rotation about it is counted
    too, although no image can show it."""
    r_est, r_true = np.asarray(estimate.rotation, float), np.asarray(truth.rotation, float)
    cos = (np.trace(r_est @ r_true.T) - 1.0) / 2.0
    return {"rotation_deg": float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))),
            "translation": float(np.linalg.norm(np.asarray(estimate.translation, float)
                                                - np.asarray(truth.translation, float)))}
