"""Signed distance primitives (numpy, metres; negative inside) for the procedural categories.

Only the zero level set matters (it is meshed by marching cubes), so some of these are signed
*bounds* rather than exact distances; their sign is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two SDFs with blend radius `k` (polynomial smooth minimum)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1.0 - h) + a * h - k * h * (1.0 - h)


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth intersection of two SDFs with blend radius `k`."""
    return -smin(-a, -b, k)


def rotation_y(angle: float) -> np.ndarray:
    """Rotation matrix about +y by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def to_local(p: np.ndarray, center, rotation: np.ndarray | None = None) -> np.ndarray:
    """Return points (N, 3) in a local frame at `center` whose axes are the columns of
    `rotation` (identity if None)."""
    q = p - np.asarray(center, dtype=float)
    return q if rotation is None else q @ rotation


def box(p: np.ndarray, half: tuple[float, float, float], rounding: float = 0.0) -> np.ndarray:
    """Rounded box centred at the origin with half extents `half` (rounding included)."""
    q = np.abs(p) - (np.asarray(half) - rounding)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(axis=-1), 0.0)
    return outside + inside - rounding


def revolve_z(p: np.ndarray, radius_of_z: Callable[[np.ndarray], np.ndarray], z0: float,
              z1: float, rounding: float = 0.0) -> np.ndarray:
    """Solid of revolution about the z axis with radius profile r(z) for z in [z0, z1], caps
    rounded by `rounding`."""
    z = p[:, 2]
    side = np.hypot(p[:, 0], p[:, 1]) - radius_of_z(np.clip(z, z0, z1))
    caps = np.maximum(z0 - z, z - z1)
    return smax(side, caps, rounding)


def bend_z(p: np.ndarray, curvature: float) -> np.ndarray:
    """Return points mapped so that the z axis bends towards +x with `curvature` (1/m): the
    shape x = curvature * z^2 / 2 becomes straight (a non-linear deformation)."""
    out = p.copy()
    out[:, 0] = p[:, 0] - 0.5 * curvature * p[:, 2] ** 2
    return out
