"""Transfer of named points (grasp points, part markers) from the canonical to a registered
instance through the shared topology.

Each point given on the canonical is attached to its closest surface point on the canonical
mesh, stored as (face index, barycentric coordinates); on the deformed mesh (same faces, same
vertex order) the same face and barycentrics give the transferred point. A point off the
surface is projected onto it first: its offset from the surface is not carried over (the
distance is reported by `locate_points`).

Points JSON (see `configs/examples/points.json`)::

    {"points": {"cap_top": [0.0, 0.0, 0.23], "body_side": [0.036, 0.0, 0.075]},
     "units": "m"}

Coordinates are in the canonical's object frame; "units" ("m", "cm" or "mm"; optional, default
"m") is converted to the units of the mesh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from regtool.errors import RegistrationError
from regtool.io import read_json
from regtool.registration.inputs import length_scale


@dataclass(frozen=True)
class SurfaceLocation:
    """Where a named point attaches to the canonical mesh.

    face: index of the triangle holding the closest surface point.
    barycentric: (3,) float64 weights of the face's three vertices (sum 1, each >= 0).
    distance: distance from the given point to that surface point, mesh units.
    """

    face: int
    barycentric: np.ndarray
    distance: float


def read_named_points(path: Path, units: str = "m") -> dict[str, np.ndarray]:
    """Return {name: (3,) float64} from a points JSON file (format in the module docstring),
    converted to `units`; RegistrationError naming the file and point if the file is missing or
    malformed, "points" is missing or empty, a name is empty, or a value is not 3 finite
    numbers."""
    data = read_json(path, "points", RegistrationError)
    source = f"points {path}"
    return parse_named_points(data, units, source)


def parse_named_points(data: Mapping, units: str = "m",
                       source: str = "points") -> dict[str, np.ndarray]:
    """Return {name: (3,) float64} in `units` from the points JSON object `data` (see
    `read_named_points`); RegistrationError naming `source` and the offending entry."""
    if "points" not in data:
        raise RegistrationError(f"{source}: missing field 'points'")
    points = data["points"]
    if not isinstance(points, dict) or len(points) == 0:
        raise RegistrationError(f"{source}: field 'points' must be a non-empty object "
                                f"{{name: [x, y, z]}}")
    file_units = data.get("units", "m")
    if not isinstance(file_units, str):
        raise RegistrationError(f"{source}: field 'units' must be a string")
    scale = length_scale(file_units, units, source)
    out = {}
    for name, value in points.items():
        if not name.strip():
            raise RegistrationError(f"{source}: point names must not be empty")
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in value)):
            raise RegistrationError(f"{source}: point '{name}' must be [x, y, z] numbers, "
                                    f"got {value!r}")
        if not all(math.isfinite(v) for v in value):
            raise RegistrationError(f"{source}: point '{name}' has non-finite coordinates")
        out[name] = np.asarray(value, dtype=np.float64) * scale
    return out


def _check_mesh(vertices: np.ndarray, faces: np.ndarray, name: str) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 3 or not np.isfinite(v).all():
        raise RegistrationError(f"{name}: vertices must be finite with shape (V>=3, 3), "
                                f"got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or f.min() < 0 or f.max() >= len(v):
        raise RegistrationError(f"{name}: faces must have shape (F>=1, 3) and index the "
                                f"{len(v)} vertices")
    return v, f


SURFACE_TOLERANCE = 0.05  # fraction of the canonical's bounding-box diagonal


def object_size(vertices: np.ndarray) -> float:
    """Return the length of the bounding-box diagonal of vertices (V, 3), their units."""
    v = np.asarray(vertices, dtype=np.float64)
    return float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))


def far_from_surface(canonical_vertices: np.ndarray, faces: np.ndarray,
                     named_points: Mapping[str, np.ndarray],
                     fraction: float = SURFACE_TOLERANCE) -> dict[str, float]:
    """Return {name: distance to the canonical's surface} of the named points further than
    `fraction` x the canonical's bounding-box diagonal from it (mesh units): points that were
    probably given in another frame or unit (they are projected onto the surface)."""
    names = list(named_points)
    if not names:
        return {}
    pts = np.stack([np.asarray(named_points[n], dtype=np.float64).reshape(3) for n in names])
    limit = fraction * object_size(canonical_vertices)
    locations = locate_points(canonical_vertices, faces, pts)
    return {n: loc.distance for n, loc in zip(names, locations) if loc.distance > limit}


def locate_points(vertices: np.ndarray, faces: np.ndarray,
                  points: np.ndarray) -> list[SurfaceLocation]:
    """Return, for each point (N, 3), its closest surface point on the mesh (vertices (V, 3),
    faces (F, 3), same frame and units) as a `SurfaceLocation` (trimesh.proximity.closest_point).
    """
    v, f = _check_mesh(vertices, faces, "canonical mesh")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0 or not np.isfinite(pts).all():
        raise RegistrationError("points to transfer must be finite and non-empty")
    mesh = trimesh.Trimesh(v, f, process=False)
    closest, distance, face = trimesh.proximity.closest_point(mesh, pts)
    tri = v[f[face]]  # (N, 3, 3)
    bary = trimesh.triangles.points_to_barycentric(tri, closest)
    # Degenerate faces give non-finite weights; closest points lie on the triangle, so clipping
    # only removes round-off.
    bary = np.where(np.isfinite(bary), bary, 1.0 / 3.0)
    bary = np.clip(bary, 0.0, None)
    bary /= bary.sum(axis=1, keepdims=True)
    return [SurfaceLocation(int(fi), b, float(d)) for fi, b, d in zip(face, bary, distance)]


def apply_locations(vertices: np.ndarray, faces: np.ndarray,
                    locations: list[SurfaceLocation]) -> np.ndarray:
    """Return (N, 3): each location's point on the mesh (vertices (V, 3), faces (F, 3)):
    sum_k barycentric[k] * vertices[faces[face, k]]."""
    v, f = _check_mesh(vertices, faces, "deformed mesh")
    idx = np.array([loc.face for loc in locations], dtype=np.int64)
    bary = np.stack([loc.barycentric for loc in locations])
    if idx.max() >= len(f):
        raise RegistrationError("surface location refers to a face the mesh does not have")
    return np.einsum("nk,nkd->nd", bary, v[f[idx]])


def _transfer(canonical_vertices, faces, deformed_vertices, named_points):
    can, f = _check_mesh(canonical_vertices, faces, "canonical mesh")
    shape = np.shape(deformed_vertices)
    if shape != can.shape:
        raise RegistrationError(f"deformed mesh has vertices of shape {shape}, the canonical "
                                f"{can.shape}: they must share the vertex order")
    dfm, _ = _check_mesh(deformed_vertices, f, "deformed mesh")
    names = list(named_points)
    if not names:
        return names, np.zeros((0, 3)), [], np.zeros((0, 3))
    pts = np.stack([np.asarray(named_points[n], dtype=np.float64).reshape(3) for n in names])
    locations = locate_points(can, f, pts)
    return names, pts, locations, apply_locations(dfm, f, locations)


def transfer_points(canonical_vertices: np.ndarray, faces: np.ndarray,
                    deformed_vertices: np.ndarray,
                    named_points: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Return {name: [x, y, z]}: each named point (3,) given on the canonical (vertices (V, 3),
    faces (F, 3), object frame) mapped onto the deformed mesh (deformed_vertices (V, 3), same
    faces and vertex order) through its closest canonical surface point's face and barycentrics.
    Units are those of the inputs. RegistrationError if the vertex counts differ or an input is
    malformed.
    """
    names, _, _, moved = _transfer(canonical_vertices, faces, deformed_vertices, named_points)
    return {n: [float(c) for c in p] for n, p in zip(names, moved)}


def transfer_record(canonical_vertices: np.ndarray, faces: np.ndarray,
                    deformed_vertices: np.ndarray, named_points: Mapping[str, np.ndarray],
                    units: str = "m") -> dict:
    """Return a JSON-ready record of a transfer: {"units", "frame": "object", "points": {name:
    [x, y, z] on the deformed mesh}, "canonical": {name: {"given", "face", "barycentric",
    "distance_to_surface", "far_from_surface"}}, "surface_tolerance", "far_from_surface":
    [names]} (same units as the inputs, named by `units`). A point is far from the surface when
    its distance exceeds `surface_tolerance` = SURFACE_TOLERANCE x the canonical's bounding-box
    diagonal."""
    names, pts, locations, moved = _transfer(canonical_vertices, faces, deformed_vertices,
                                             named_points)
    limit = SURFACE_TOLERANCE * object_size(canonical_vertices)
    return {
        "units": units,
        "frame": "object",
        "points": {n: [float(c) for c in p] for n, p in zip(names, moved)},
        "canonical": {n: {"given": pts[i].tolist(), "face": loc.face,
                          "barycentric": loc.barycentric.tolist(),
                          "distance_to_surface": loc.distance,
                          "far_from_surface": loc.distance > limit}
                      for i, (n, loc) in enumerate(zip(names, locations))},
        "surface_tolerance": limit,
        "far_from_surface": [n for n, loc in zip(names, locations) if loc.distance > limit],
    }
