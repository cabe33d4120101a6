"""Mesh and point-set I/O with validation. Coordinates are float64 in the file's units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from regtool.errors import MeshError
from regtool.io import write_atomic

MESH_SUFFIXES = (".ply", ".obj", ".stl", ".off", ".glb")
POINT_SUFFIXES = (".ply", ".npy", ".xyz", ".txt", ".pcd")


def validate_mesh(vertices: np.ndarray, faces: np.ndarray, name: str = "mesh") -> None:
    """Raise MeshError unless vertices (V, 3) are finite, faces (F, 3) index them and the mesh
    has a non-zero area and extent."""
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) < 3:
        raise MeshError(f"{name}: vertices must have shape (V>=3, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise MeshError(f"{name}: faces must have shape (F>=1, 3), got {faces.shape}")
    if not np.isfinite(vertices).all():
        raise MeshError(f"{name}: vertices contain NaN or infinite coordinates")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"{name}: face indices out of range [0, {len(vertices)})")
    extent = np.ptp(vertices, axis=0)
    if (extent <= 0).sum() > 1:
        raise MeshError(f"{name}: degenerate mesh (extent {extent.tolist()})")
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 0:
        raise MeshError(f"{name}: degenerate mesh (zero surface area)")


_TEXT_FORMATS = (".obj", ".off")  # mesh formats that are text only


def load_mesh(path: Path) -> trimesh.Trimesh:
    """Return the triangle mesh in `path` (vertex order kept, no merging); MeshError if missing,
    unreadable, empty, non-finite or degenerate."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}")
    if path.suffix.lower() in _TEXT_FORMATS:
        # trimesh decodes any bytes when charset-normalizer is installed (it comes with Ray's
        # dependencies), reading binary garbage as an empty mesh: refuse it here instead.
        try:
            binary = b"\x00" in path.read_bytes()
        except OSError as exc:
            raise MeshError(f"cannot read mesh {path}: {exc.strerror or exc}") from exc
        if binary:
            raise MeshError(f"cannot read mesh {path}: binary data in a "
                            f"{path.suffix.lower()[1:].upper()} (text) file")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for malformed files
        raise MeshError(f"cannot read mesh {path}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshError(f"mesh file {path} holds no triangles")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    validate_mesh(vertices, faces, str(path))
    return trimesh.Trimesh(vertices, faces, process=False)


def save_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a mesh atomically; the format follows the suffix (.ply binary, .obj text)."""
    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64),
                           process=False)

    def writer(tmp: Path) -> None:
        if tmp.suffix == ".obj":
            tmp.write_text(trimesh.exchange.obj.export_obj(mesh, include_normals=False,
                                                           include_texture=False))
        else:
            mesh.export(tmp)

    return write_atomic(path, writer)


def load_points(path: Path) -> np.ndarray:
    """Return the (N, 3) float64 points of a point file (.ply vertices, .npy, .xyz/.txt/.pcd
    ASCII rows); MeshError if missing, malformed, empty or non-finite."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"point file not found: {path}")
    try:
        if path.suffix == ".npy":
            pts = np.load(path, allow_pickle=False)
        elif path.suffix == ".ply":
            # trimesh.load is typed as returning Geometry; a .ply loads as a Trimesh or a
            # PointCloud, both with vertices (anything else fails here -> MeshError below)
            loaded = trimesh.load(path, process=False)
            pts = np.asarray(loaded.vertices)  # type: ignore[attr-defined]
        elif path.suffix == ".pcd":
            pts = _read_ascii_pcd(path)
        else:
            pts = np.loadtxt(path, ndmin=2)[:, :3]
    except Exception as exc:
        raise MeshError(f"cannot read points {path}: {exc}") from exc
    return validate_points(pts, f"points {path}")


def validate_points(points, name: str = "points") -> np.ndarray:
    """Return `points` as an (N, 3) float64 array; MeshError naming `name` if it is empty,
    mis-shaped or non-finite."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) == 0:
        raise MeshError(f"{name}: expected shape (N>0, 3), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise MeshError(f"{name}: NaN or infinite coordinates")
    return arr


def _read_ascii_pcd(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("DATA"):
            if "ascii" not in line:
                raise ValueError("only ASCII .pcd files are supported")
            return np.loadtxt(lines[i + 1:], ndmin=2)[:, :3]
    raise ValueError("no DATA line")


def save_points(path: Path, points: np.ndarray) -> Path:
    """Write an (N, 3) point set atomically as a binary PLY point cloud."""
    cloud = trimesh.PointCloud(np.asarray(points, np.float64))
    return write_atomic(path, lambda tmp: cloud.export(tmp))
