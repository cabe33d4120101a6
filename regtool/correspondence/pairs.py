"""Training pairs of the correspondence network, rendered on the fly (issue 14, item 2).

A pair: the observation is a photo-like view (`features.views.render_view`: random lights,
material, background) of a mesh at a true pose (`views.sample_pose`); the estimate is the
deformed canonical at a perturbed code (the instance's latent code plus noise, or the
canonical's own code) at a perturbed pose (rotation about a random axis by up to
`max_rotation_deg`, x/y translation up to `max_translation_m`, z a quarter of that; one pair in
three within a tenth of these, so that the last, small steps of a registration are trained
too). The target is `field.true_field` of the estimate's G-buffer against the deformed
canonical at the instance's code and the true pose (for a symmetric category the true pose
turned about the axis to the equivalent closest to the estimate), invalid where hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regtool.correspondence.field import symmetric_truth, true_field
from regtool.correspondence.network import network_input, observation_input
from regtool.features.views import ViewMesh, ViewSampler, render_view, sample_pose
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.render.gbuffer import rasterize


@dataclass(frozen=True)
class PairSource:
    """What pairs are drawn from: the shape space, meshes (metres) with their latent codes
    (n, k) (training meshes: the shape space's training codes), the view sampler, the perturbation
    ranges (degrees, metres, latent std), the category's symmetry (object frame: axis (3,) and
    point (3,) in metres) or None, and the probability of starting from the canonical's code."""

    space: Any  # a ShapeSpace
    meshes: tuple[ViewMesh, ...]
    codes: np.ndarray
    sampler: ViewSampler
    max_rotation_deg: float = 30.0
    max_translation_m: float = 0.08
    code_noise: float = 0.5
    symmetry_axis: np.ndarray | None = None
    symmetry_point: np.ndarray | None = None
    canonical_share: float = 0.5

    @property
    def camera(self) -> CameraIntrinsics:
        s = self.sampler
        return CameraIntrinsics.from_fov(s.width, s.height, s.fov_y_deg)

    @property
    def radius(self) -> float:
        """The canonical's largest distance from its centroid, metres."""
        from regtool.units import UNITS_TO_METRES

        v = np.array(self.space.canonical_vertices, np.float64)
        return UNITS_TO_METRES.get(self.space.units, 1.0) * float(
            np.linalg.norm(v - v.mean(0), axis=1).max())


@dataclass(frozen=True)
class Pair:
    """One training pair: observed (4, H, W) float32 RGB + object mask (`network.
    observation_input`), rendered (5, H, W) G-buffer channels
    (`network.network_input`), target (2, H, W) float32 displacement (pixels), valid (H, W)
    bool, mask (H, W) bool (the estimate's coverage)."""

    observed: torch.Tensor
    rendered: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor


def perturb_pose(pose: Pose, rng: np.random.Generator, max_rotation_deg: float,
                 max_translation_m: float) -> Pose:
    """Return `pose` turned about the object origin by an angle uniform in [0, max] about a
    uniform random axis and moved by x, y uniform in +/-max_translation_m, z in +/- a quarter of
    it (metres, camera frame)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.0, max_rotation_deg))
    shift = rng.uniform(-1.0, 1.0, 3) * max_translation_m * np.array([1.0, 1.0, 0.25])
    return pose.compose(axis * angle, shift)


@dataclass(frozen=True)
class _View:
    """An observation of a pair: mesh index, true pose, RGB (H, W, 3) uint8, object mask
    (H, W) bool, depth (H, W)."""

    index: int
    truth: Pose
    rgb: np.ndarray
    mask: np.ndarray
    depth: torch.Tensor


def _observe(source: PairSource, rng: np.random.Generator) -> _View:
    i = int(rng.integers(len(source.meshes)))
    mesh = source.meshes[i]
    truth = sample_pose(rng, source.sampler)
    rgb, label = render_view(mesh, source.sampler, rng, pose=truth)
    observed_cam = mesh.vertices @ truth.rotation.T + truth.translation
    return _View(i, truth, rgb, label > 0,
                 rasterize(observed_cam, mesh.faces, source.camera).depth)


def _estimate(source: PairSource, view: _View, rng: np.random.Generator) -> Pair | None:
    """Return a pair of `view` and a perturbed estimate, or None when the estimate covers
    fewer than 50 pixels or has fewer than 20 valid ones."""
    from regtool.units import UNITS_TO_METRES

    space = source.space
    unit = UNITS_TO_METRES.get(space.units, 1.0)
    camera = source.camera
    faces = torch.tensor(space.faces, dtype=torch.int64)
    std = np.sqrt(np.maximum(space.explained_variance, 1e-20))
    if rng.uniform() < source.canonical_share:
        z_est = np.array(space.canonical_code, np.float64)
    else:
        z_est = source.codes[view.index] + rng.normal(size=std.shape) * source.code_noise * std
    scale = 0.1 if rng.uniform() < 1.0 / 3.0 else 1.0
    truth = view.truth
    estimate = perturb_pose(truth, rng, source.max_rotation_deg * scale,
                            source.max_translation_m * scale)
    est_cam = space.deform_numpy(z_est) * unit @ estimate.rotation.T + estimate.translation
    gb = rasterize(est_cam, space.faces, camera)
    if int(gb.mask.sum()) < 50:
        return None
    r_true, t_true = truth.rotation, truth.translation
    if source.symmetry_axis is not None:
        r_sym = symmetric_truth(r_true, estimate.rotation, source.symmetry_axis)
        c = np.zeros(3) if source.symmetry_point is None else source.symmetry_point
        t_true = t_true + r_true @ c - r_sym @ c
        r_true = r_sym
    target_cam = space.deform_numpy(source.codes[view.index]) * unit @ r_true.T + t_true
    fld = true_field(gb, torch.as_tensor(target_cam), faces, camera, view.depth)
    valid = fld.weight > 0
    if int(valid.sum()) < 20:
        return None
    rendered = network_input(gb, torch.as_tensor(est_cam, dtype=torch.float32), faces,
                             source.radius)
    observed = observation_input(view.rgb.astype(np.float32) / 255.0, view.mask)
    return Pair(observed, rendered, fld.displacement.permute(2, 0, 1).contiguous(), valid,
                gb.mask)


def render_pair(source: PairSource, rng: np.random.Generator, tries: int = 20,
                per_view: int = 1) -> list[Pair] | Pair:
    """Return one seeded pair (module docstring), or with `per_view` > 1 a list of that many
    pairs sharing one observation (different estimates; rendering the observation is the
    costly part). Draws are repeated (up to `tries` times) where the estimate covers fewer
    than 50 pixels or has fewer than 20 valid pixels; RuntimeError if none is usable."""
    for _ in range(tries):
        view = _observe(source, rng)
        pairs: list[Pair] = []
        for _ in range(3 * per_view):
            pair = _estimate(source, view, rng)
            if pair is not None:
                pairs.append(pair)
            if len(pairs) == per_view:
                return pairs if per_view > 1 else pairs[0]
    raise RuntimeError(f"no usable pair in {tries} draws (object out of view)")


def stack_pairs(pairs: list[Pair]) -> dict[str, torch.Tensor]:
    """Return the batch of `pairs`: observed (B, 3, H, W), rendered (B, 5, H, W), target
    (B, 2, H, W), valid (B, H, W), mask (B, H, W)."""
    return {k: torch.stack([getattr(p, k) for p in pairs])
            for k in ("observed", "rendered", "target", "valid", "mask")}


def render_pairs(source: PairSource, seed: int, index: int, count: int,
                 per_view: int = 1) -> list[Pair]:
    """Return `count` pairs of batch number `index` of the stream of `seed` (deterministic),
    `per_view` of them sharing each observation."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    pairs: list[Pair] = []
    while len(pairs) < count:
        got = render_pair(source, rng, per_view=min(per_view, count - len(pairs)))
        pairs.extend(got if isinstance(got, list) else [got])
    return pairs
