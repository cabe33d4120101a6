"""Helpers of the renderer tests: posing, cameras and a reference rasteriser in numpy."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from regtool.geometry.camera import CameraIntrinsics, Pose


def posed_vertices(mesh: trimesh.Trimesh, pose: Pose) -> np.ndarray:
    """Return (V, 3) float64 camera-frame vertices of `mesh` at `pose`."""
    return np.asarray(mesh.vertices) @ pose.rotation.T + pose.translation


def view_of(mesh: trimesh.Trimesh, distance: float = 0.45, azimuth: float = 30.0,
            elevation: float = 20.0) -> Pose:
    """Return a pose looking at the centre of the mesh's bounding box."""
    return Pose.look_at(distance, azimuth, elevation, target=mesh.bounds.mean(axis=0))


def small_camera(width: int = 96, height: int = 80, fov_y: float = 40.0) -> CameraIntrinsics:
    return CameraIntrinsics.from_fov(width, height, fov_y)


def as_torch(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def reference_rasterize(vertices: np.ndarray, faces: np.ndarray, camera: CameraIntrinsics,
                        chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A slow numpy twin of the G-buffer's coverage: project the camera-frame vertices, test
    every pixel centre against every projected triangle (edge functions), keep the nearest hit.

    Returns face_id (H, W) int64 (0 = background, else face + 1), depth (H, W) (0 background)
    and edge_distance (H, W): the distance in pixels from the pixel centre to the nearest
    projected triangle edge of any face (small values are ambiguous coverage)."""
    v = np.asarray(vertices, np.float64)
    uv = np.stack([camera.fx * v[:, 0] / v[:, 2] + camera.cx,
                   camera.fy * v[:, 1] / v[:, 2] + camera.cy], axis=-1)
    jj, ii = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    px = np.stack([jj.ravel(), ii.ravel()], axis=-1)  # (P, 2) pixel centres (u, v)
    rays = np.concatenate([(px - [camera.cx, camera.cy]) / [camera.fx, camera.fy],
                           np.ones((len(px), 1))], axis=1)
    best_z = np.full(len(px), np.inf)
    best_f = np.zeros(len(px), np.int64)
    edge = np.full(len(px), np.inf)
    for start in range(0, len(faces), chunk):
        fc = faces[start:start + chunk]
        a, b, c = uv[fc[:, 0]], uv[fc[:, 1]], uv[fc[:, 2]]  # (K, 2)
        inside_pos = np.ones((len(px), len(fc)), bool)
        inside_neg = np.ones((len(px), len(fc)), bool)
        for p0, p1 in ((a, b), (b, c), (c, a)):
            e = p1 - p0
            length = np.maximum(np.linalg.norm(e, axis=1), 1e-12)
            cross = (e[None, :, 0] * (px[:, None, 1] - p0[None, :, 1])
                     - e[None, :, 1] * (px[:, None, 0] - p0[None, :, 0]))
            inside_pos &= cross >= 0
            inside_neg &= cross <= 0
            # distance to the edge segment
            t = np.clip(((px[:, None, :] - p0[None]) * e[None]).sum(-1) / length ** 2, 0, 1)
            d = np.linalg.norm(px[:, None, :] - (p0[None] + t[..., None] * e[None]), axis=-1)
            edge = np.minimum(edge, d.min(axis=1))
        inside = inside_pos | inside_neg
        tri = v[fc]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        denom = rays @ n.T
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (n * tri[:, 0]).sum(-1)[None] / denom
        z = np.where(inside & (z > 0), z, np.inf)
        k = z.argmin(axis=1)
        zk = z[np.arange(len(px)), k]
        better = zk < best_z
        best_z[better] = zk[better]
        best_f[better] = start + k[better] + 1
    h, w = camera.height, camera.width
    depth = np.where(np.isfinite(best_z), best_z, 0.0)
    return best_f.reshape(h, w), depth.reshape(h, w), edge.reshape(h, w)
