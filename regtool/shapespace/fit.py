"""Fitting a shape space to 3D points: the 3D baseline of the evaluation (a latent code, and
optionally a rigid pose, fitted to observed surface points by an ICP-like alternation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from regtool.errors import MeshError
from regtool.geometry.sampling import surface_barycentrics
from regtool.shapespace.space import ShapeSpace


@dataclass(frozen=True)
class FitResult:
    """Result of `fit_points`.

    z (k,) latent code; rotation (3, 3), translation (3,): object -> frame pose of the fitted
    model (frame = the frame of the fitted points); loss: final chamfer objective (mean squared
    closest-point distances, units^2); mean_distance: mean closest-point distance from the points
    to the fitted model's vertices (units); iterations: the updates of z made.
    """

    z: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    loss: float
    mean_distance: float
    iterations: int


def fit_points(space: ShapeSpace, points, pose=None, optimise_pose: bool = False, z0=None,
               iterations: int = 50, tolerance: float = 1e-7, symmetric: bool = True,
               model_points: int = 5000, rng: np.random.Generator | None = None) -> FitResult:
    """Fit a latent code of `space` (and optionally a rigid pose) to observed points.

    points (N, 3): observed surface points in some frame (units of the shape space).
    pose: the initial object -> frame transform (an object with `rotation` (3, 3) and
    `translation` (3,), e.g. `geometry.camera.Pose`, a (R, t) pair or a (4, 4) matrix);
    None = identity. The model surface is represented by `model_points` points at fixed
    barycentric positions on the mesh faces (drawn by area from `rng`, default seed 0), so
    each is affine in z like the vertices; the mesh vertices are added to them. The model
    x = R s(z) + t is fitted by an ICP-like alternation: closest points (points -> model,
    and model -> points if `symmetric`), then the pose by weighted Kabsch (only if
    `optimise_pose`), then z by linear least squares. Starts at z0 (default: the
    canonical's code z_c). Stops when the chamfer objective (mean squared closest-point
    distances, units^2) improves by less than `tolerance` (relative) or after `iterations`.
    Returns FitResult; MeshError for bad points.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise MeshError(f"points must have shape (N>0, 3), got {pts.shape}")
    if not np.isfinite(pts).all():
        raise MeshError("points contain NaN or infinite coordinates")
    rot, trans = _pose_arrays(pose)
    z = (space.canonical_code if z0 is None else np.asarray(z0, np.float64)).copy()
    base, basis = surface_model(space, model_points, rng or np.random.default_rng(0))
    n, ns = len(pts), len(base)
    pts_tree = cKDTree(pts)
    prev, loss, it = np.inf, np.inf, 0

    def model(z):
        return base + np.einsum("k,ksc->sc", z, basis)

    def correspondences(model_frame):
        d1, a = cKDTree(model_frame).query(pts)
        idx, tgt, wts = [a], [pts], [np.full(n, 1.0 / n)]
        loss = float(np.mean(d1 ** 2))
        if symmetric:
            d2, b = pts_tree.query(model_frame)
            idx.append(np.arange(ns)), tgt.append(pts[b]), wts.append(np.full(ns, 1.0 / ns))
            loss += float(np.mean(d2 ** 2))
        return np.concatenate(idx), np.concatenate(tgt), np.concatenate(wts), loss, d1

    for _ in range(iterations):
        s = model(z)
        idx, tgt, wts, loss, _ = correspondences(s @ rot.T + trans)
        if np.isfinite(prev) and prev - loss <= tolerance * prev:
            break
        prev = loss
        if optimise_pose:
            rot, trans = _kabsch(s[idx], tgt, wts)
        local = (tgt - trans) @ rot  # R^T (p - t): targets in the object frame
        bsel = basis[:, idx, :]  # (k, L, 3)
        lhs = np.einsum("kld,jld,l->kj", bsel, bsel, wts)
        rhs = np.einsum("kld,ld,l->k", bsel, local - base[idx], wts)
        z = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        it += 1
    *_, loss, d1 = correspondences(model(z) @ rot.T + trans)
    return FitResult(z=z, rotation=rot, translation=trans, loss=loss,
                     mean_distance=float(d1.mean()), iterations=it)


def surface_model(space: ShapeSpace, count: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (base (S, 3), basis (k, S, 3)): the affine map z -> surface points of the
    deformed mesh at the vertices plus `count` fixed barycentric points on the faces (drawn on
    the canonical, by area)."""
    face, u, v = surface_barycentrics(space.canonical_vertices, space.faces, count, rng)
    bary = np.stack([1.0 - u - v, u, v], 1)  # (S, 3)
    fv = space.faces[face]  # (S, 3) vertex ids
    vb = space.canonical_vertices + space.mean_displacement
    base = np.concatenate([vb, np.einsum("sj,sjc->sc", bary, vb[fv])])
    basis = np.concatenate([space.basis, np.einsum("sj,ksjc->ksc", bary, space.basis[:, fv])],
                           axis=1)
    return base, basis


def _pose_arrays(pose) -> tuple[np.ndarray, np.ndarray]:
    """Return (R (3, 3), t (3,)) float64 from None, a Pose-like object, (R, t) or a 4x4 matrix."""
    if pose is None:
        return np.eye(3), np.zeros(3)
    if hasattr(pose, "rotation") and hasattr(pose, "translation"):
        rot, trans = pose.rotation, pose.translation
    elif isinstance(pose, (tuple, list)) and len(pose) == 2:
        rot, trans = pose
    else:
        m = np.asarray(pose, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"pose must be (R, t), a Pose or a 4x4 matrix, got shape {m.shape}")
        rot, trans = m[:3, :3], m[:3, 3]
    rot = np.asarray(rot, np.float64).reshape(3, 3)
    trans = np.asarray(trans, np.float64).reshape(3)
    return rot.copy(), trans.copy()


def _kabsch(src: np.ndarray, dst: np.ndarray, wts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (R, t) minimising sum_i w_i |R src_i + t - dst_i|^2 (proper rotation)."""
    w = wts / wts.sum()
    cs, cd = w @ src, w @ dst
    h = ((src - cs) * w[:, None]).T @ (dst - cd)
    u, _, vt = np.linalg.svd(h)
    s = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    rot = vt.T @ s @ u.T
    return rot, cd - rot @ cs
