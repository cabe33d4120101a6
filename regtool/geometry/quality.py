"""Mesh sanity checks of a deformation that keeps the topology: flipped faces and
self-intersections (counted, never assumed).

* `flipped_faces(before, after, faces)`: faces whose normal turned by more than 90 degrees
  (or collapsed to zero area) between two vertex sets of the same mesh.
* `self_intersections(vertices, faces)`: pairs of faces that share no vertex and cross each
  other: an edge of one passes through the other (segment-triangle test, Moeller-Trumbore), with
  a broad phase over the faces' bounding boxes (an R-tree). Coplanar touching pairs,
  which have measure zero for a generic mesh, are not counted.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Return the unnormalised face normals (F, 3) (length: twice the face area, units^2)."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    return np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])


def flipped_faces(before: np.ndarray, after: np.ndarray, faces: np.ndarray) -> int:
    """Return how many faces (F, 3) have, in `after` (V, 3), a normal at more than 90 degrees
    from their normal in `before` (V, 3), or a zero area where they had one."""
    n0, n1 = face_normals(before, faces), face_normals(after, faces)
    had_area = np.linalg.norm(n0, axis=1) > _EPS
    dot = (n0 * n1).sum(1)
    return int(np.count_nonzero(had_area & (dot <= 0.0)))


def _segments_cross(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray,
                    c: np.ndarray) -> np.ndarray:
    """Return (P,) bool: segment p->q (P, 3) passes through the interior of triangle abc."""
    d = q - p
    e1, e2 = b - a, c - a
    h = np.cross(d, e2)
    det = (e1 * h).sum(1)
    ok = np.abs(det) > _EPS * np.maximum(1e-300, np.linalg.norm(d, axis=1)
                                         * np.linalg.norm(e1, axis=1)
                                         * np.linalg.norm(e2, axis=1))
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = p - a
    u = inv * (s * h).sum(1)
    qv = np.cross(s, e1)
    v = inv * (d * qv).sum(1)
    t = inv * (e2 * qv).sum(1)
    return ok & (u > 0) & (v > 0) & (u + v < 1) & (t > 0) & (t < 1)


def intersecting_pairs(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Return (P, 2) int64: the pairs (i < j) of faces that share no vertex and intersect."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    tri = v[f]  # (F, 3, 3)
    lo, hi = tri.min(1), tri.max(1)
    pairs = _overlapping_boxes(lo, hi)
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    i, j = pairs[:, 0], pairs[:, 1]
    shared = (f[i][:, :, None] == f[j][:, None, :]).any(axis=(1, 2))
    keep = ~shared
    i, j = i[keep], j[keep]
    hit = np.zeros(len(i), bool)
    for first, second in ((i, j), (j, i)):
        a, b, c = tri[second, 0], tri[second, 1], tri[second, 2]
        for k in range(3):
            p, q = tri[first, k], tri[first, (k + 1) % 3]
            hit |= _segments_cross(p, q, a, b, c)
    out = np.stack([i[hit], j[hit]], axis=1)
    return np.sort(out, axis=1).astype(np.int64)


def _overlapping_boxes(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Return (P, 2) int64: the pairs (i < j) of boxes [lo, hi] (B, 3) that overlap."""
    from rtree import index

    props = index.Property()
    props.dimension = 3
    boxes = np.concatenate([lo, hi], axis=1)
    tree = index.Index(((k, tuple(b), None) for k, b in enumerate(boxes)), properties=props,
                       interleaved=True)
    ids, counts = tree.intersection_v(lo, hi)
    ids, counts = ids.astype(np.int64), counts.astype(np.int64)
    first = np.repeat(np.arange(len(lo)), counts)
    keep = first < ids
    return np.stack([first[keep], ids[keep]], axis=1).astype(np.int64)


def self_intersections(vertices: np.ndarray, faces: np.ndarray) -> int:
    """Return the number of pairs of faces that share no vertex and intersect."""
    return len(intersecting_pairs(vertices, faces))
