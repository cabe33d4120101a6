"""Geometric correspondence fields (Grabner et al., ECCV 2020): for every pixel of a rendering,
where the surface point seen there lies in the observed image, minus the pixel.

* `true_field`: the ground truth from the G-buffer of the estimate. Pixel p shows face f at
  barycentrics b on the estimate's mesh; the same face and barycentrics on the target mesh
  (the same topology: the deformed canonical at the true code), posed by the true pose and
  projected, give the pixel q_p where that surface point is observed; the field is q_p - p in
  pixels (u right, v down). It is invalid where the estimate covers nothing, where q_p leaves
  the image, and where the point is hidden in the observation (its depth differs from the
  observation's depth buffer at q_p by more than `depth_tolerance` x its depth).
* `field_gradient`: the per-pixel 2D field F = dE/d(u, v) of the reprojection energy
  E = 1/2 sum_p w_p |q_p - pi(X_p)|^2 / sum_p w_p, i.e. F_p = -w_p d_p / sum w: the field that
  `render.diff.field_to_vertex_gradients` propagates to the vertices (and so to code and pose).
* `symmetric_truth`: for a category with a symmetry axis, the true rotation turned about that
  axis to the equivalent closest to an estimate (no image shows the difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from regtool.geometry.camera import CameraIntrinsics
from regtool.render.gbuffer import GBuffer


@dataclass(frozen=True)
class Field:
    """A correspondence field at one rendering: `displacement` (H, W, 2) float32 pixels (u, v),
    `weight` (H, W) float32 >= 0 (0 where invalid or not rendered; for the ground truth 1 on
    valid pixels, for a network its confidence)."""

    displacement: torch.Tensor
    weight: torch.Tensor

    def mean_norm(self) -> float:
        """Return the weighted mean length of the displacements (pixels; 0 when no weight)."""
        total = float(self.weight.sum())
        if total <= 0:
            return 0.0
        return float((self.displacement.norm(dim=-1) * self.weight).sum()) / total


def surface_points(gbuffer: GBuffer, vertices: torch.Tensor, faces: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (flat indices (M,) of the covered pixels, points (M, 3)): the point with each
    pixel's face and barycentrics on the mesh `vertices` (V, 3) (same topology as the one
    rasterised into `gbuffer`), in the frame of `vertices`."""
    idx = gbuffer.mask.reshape(-1).nonzero().squeeze(1)
    face = gbuffer.face_id.reshape(-1)[idx] - 1
    bary = gbuffer.bary.reshape(-1, 3)[idx].to(vertices.dtype)
    corners = faces.to(torch.int64)[face]  # (M, 3)
    v = vertices.to("cpu")
    points = (v[corners] * bary[..., None]).sum(1)
    return idx, points


def project(points: torch.Tensor, camera: CameraIntrinsics) -> torch.Tensor:
    """Return the pixel coordinates (M, 2) (u, v; pixel centres at +0.5) of camera-frame
    points (M, 3) (OpenCV, metres)."""
    z = points[:, 2].clamp_min(1e-9)
    return torch.stack([camera.fx * points[:, 0] / z + camera.cx,
                        camera.fy * points[:, 1] / z + camera.cy], dim=-1)


def pixel_centres(idx: torch.Tensor, width: int) -> torch.Tensor:
    """Return (M, 2) float (u, v) of the centres of the flat pixel indices `idx`."""
    return torch.stack([(idx % width).to(torch.float64) + 0.5,
                        (idx // width).to(torch.float64) + 0.5], dim=-1)


def true_field(gbuffer: GBuffer, target_vertices: torch.Tensor, faces: torch.Tensor,
               camera: CameraIntrinsics, observed_depth: torch.Tensor | None,
               depth_tolerance: float = 0.02) -> Field:
    """Return the ground-truth `Field` of the rendering `gbuffer` (module docstring).

    target_vertices (V, 3): the target mesh (same faces as the rendered one) in the camera
    frame (OpenCV, metres), i.e. at the true code and pose. observed_depth (H, W): the
    observation's depth (metres, 0 where empty; None: no visibility test, every projected
    point inside the image is valid)."""
    h, w = gbuffer.height, gbuffer.width
    disp = torch.zeros(h * w, 2, dtype=torch.float32)
    weight = torch.zeros(h * w, dtype=torch.float32)
    idx, points = surface_points(gbuffer, target_vertices.to(torch.float64), faces)
    if idx.numel():
        q = project(points, camera)
        d = q - pixel_centres(idx, w)
        col, row = torch.floor(q[:, 0]).long(), torch.floor(q[:, 1]).long()
        valid = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (points[:, 2] > 0)
        if observed_depth is not None:
            flat = row.clamp(0, h - 1) * w + col.clamp(0, w - 1)
            z_obs = observed_depth.reshape(-1).to(torch.float64)[flat]
            valid &= (z_obs > 0) & ((z_obs - points[:, 2]).abs()
                                    <= depth_tolerance * points[:, 2])
        disp[idx] = d.to(torch.float32)
        weight[idx] = valid.to(torch.float32)
    return Field(disp.reshape(h, w, 2), weight.reshape(h, w))


def field_gradient(field: Field) -> torch.Tensor:
    """Return F (H, W, 2) float32 = dE/d(u, v) of E = 1/2 sum_p w_p |d_p - delta_p|^2 / sum w
    at delta = 0 (delta_p: the motion of the surface point seen at p): -w_p d_p / sum w; zero
    everywhere when no pixel has weight."""
    total = float(field.weight.sum())
    if total <= 0:
        return torch.zeros_like(field.displacement)
    return field.displacement * (-field.weight / total)[..., None]


def symmetric_truth(true_rotation: np.ndarray, estimate_rotation: np.ndarray,
                    axis: np.ndarray | None) -> np.ndarray:
    """Return the object -> camera rotation R_true Rot(axis, theta) closest (Frobenius, hence
    geodesic) to `estimate_rotation`; `true_rotation` unchanged for axis None. axis: the
    object-frame symmetry axis (3,) through the object origin."""
    if axis is None:
        return np.asarray(true_rotation, float)
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    # An orthonormal basis (e1, e2, a); in it the rotation about a is about the third axis.
    helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(a, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(a, e1)
    basis = np.stack([e1, e2, a], axis=1)
    m = basis.T @ np.asarray(true_rotation, float).T @ np.asarray(estimate_rotation, float) \
        @ basis
    theta = np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
    c, s = np.cos(theta), np.sin(theta)
    rot_local = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return np.asarray(true_rotation, float) @ basis @ rot_local @ basis.T


def oracle_estimator(target_vertices: list[torch.Tensor], observed_depths: list[torch.Tensor],
                     depth_tolerance: float = 0.02):
    """Return a field estimator (`registration.learned.FieldEstimator`) that gives the
    ground-truth field: per view i, `true_field` against the target mesh `target_vertices[i]`
    (V, 3) in view i's camera frame (the true code at the true pose) and the observation's
    depth `observed_depths[i]` (H, W). Used to check the propagation (the oracle test)."""

    def estimate(view: int, gbuffer: GBuffer, vertices: torch.Tensor, faces: torch.Tensor,
                 camera: CameraIntrinsics) -> Field:
        return true_field(gbuffer, target_vertices[view], faces, camera, observed_depths[view],
                          depth_tolerance)

    return estimate
