"""Seeded uniform sampling of mesh surfaces (by area): the one sampler of regtool.

`surface_barycentrics` draws faces and barycentric coordinates; `sample_surface` turns them into
points. Both consume the generator in the same order (faces, then u, then v), so a point set and
the barycentric positions drawn from equally seeded generators describe the same samples.
"""

from __future__ import annotations

import numpy as np


def surface_barycentrics(vertices: np.ndarray, faces: np.ndarray, count: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (face (count,) int, u (count,), v (count,)): faces drawn with probability
    proportional to their area and (u, v) uniform on the triangle (u + v <= 1); a sample is
    tri[0] + u (tri[1] - tri[0]) + v (tri[2] - tri[0]), barycentrics (1 - u - v, u, v)."""
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(faces), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    return face, u, v


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Return `count` points (count, 3) float64 uniformly distributed (by area) on the mesh
    surface, drawn from `rng`; same units as `vertices`."""
    face, u, v = surface_barycentrics(vertices, faces, count, rng)
    t = vertices[faces][face]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
