"""The residual refinement beyond the latent space (issue 15): it reduces the image loss and the
3D error where the latent space cannot express the shape, never breaks the mesh (flipped faces
and self-intersections counted before and after), and its config is validated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regtool.config import RegisterConfig, load_config
from regtool.errors import ConfigError
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.geometry.quality import flipped_faces, self_intersections
from regtool.registration.optimise import Observation, posed_vertices, register
from regtool.registration.refine import (
    RefinedResult,
    refinement_record,
    residual_basis,
    safe_residual,
)
from regtool.shapespace.space import ShapeSpace


@pytest.fixture(scope="module")
def space(bottle_artifacts) -> ShapeSpace:
    return ShapeSpace.load(bottle_artifacts["shapespace"])


def _bulge(space: ShapeSpace, height: float = 0.7, width: float = 0.15,
           around: np.ndarray | None = None) -> np.ndarray:
    """Return target vertices (V, 3): the canonical's code plus a smooth radial bulge of the
    body at `height` (fraction of its height; up to ~25 % of the local radius), times the
    per-vertex weights `around` (default 1: all around the axis), with its latent-space part
    removed, so that no code expresses it."""
    v0 = space.deform_numpy(space.canonical_code)
    r = v0 - v0.mean(0)
    h = (v0[:, 2] - v0[:, 2].min()) / np.ptp(v0[:, 2])
    rad = np.linalg.norm(r[:, :2], axis=1, keepdims=True)
    weight = np.exp(-((h - height) / width) ** 2) * (1.0 if around is None else around)
    bump = np.zeros_like(v0)
    bump[:, :2] = r[:, :2] / np.maximum(rad, 1e-9) * 0.25 * rad * weight[:, None]
    a = space.basis.reshape(space.latent_dim, -1).T
    flat = bump.reshape(-1)
    flat = flat - a @ np.linalg.lstsq(a, flat, rcond=None)[0]
    return v0 + flat.reshape(-1, 3)


def _views(space: ShapeSpace, target: np.ndarray, azimuths):
    """Observations of `target` rendered by the registration's renderer, their RGB loss and the
    renderer."""
    from regtool.render.diff import DiffRenderSettings, diff_render

    settings = DiffRenderSettings(image_type="rgb")
    faces = torch.tensor(space.faces)

    def render_fn(v, cam):
        return diff_render(v, faces, cam, settings)

    camera = CameraIntrinsics.from_fov(128, 96, 40.0)
    observations, targets = [], []
    for az in azimuths:
        pose = Pose.look_at(0.45, azimuth_deg=az, elevation_deg=20.0)
        with torch.no_grad():
            cam_v = posed_vertices(torch.as_tensor(target), [pose],
                                   torch.zeros(6, dtype=torch.float64), 0.1)[0]
            image, mask = render_fn(cam_v.float(), camera)
        observations.append(Observation(image.permute(1, 2, 0).numpy(), camera, pose,
                                        mask.numpy()))
        targets.append(image[None, :3])

    def loss_fn(rendered, i):
        return ((rendered - targets[i]) ** 2).mean()
    return observations, loss_fn, render_fn


@pytest.mark.gl
def test_refinement_goes_where_the_latent_space_cannot(space):
    target = _bulge(space)
    observations, loss_fn, render_fn = _views(space, target, (30.0,))
    # Without the Mahalanobis prior of the defaults (it pulls the total field towards the mean
    # shape, which the target is not) and with the narrower kernel and smaller steps measured
    # on this RGB comparison.
    cfg = RegisterConfig(iterations=4, start="canonical", gif=False, refine="residual",
                         refine_iterations=12, refine_beta=0.3, refine_lambda=1.0,
                         refine_mahalanobis=0.0, refine_learning_rate=0.01)
    result = register(space, observations, loss_fn, render_fn, cfg, torch.device("cpu"))
    assert isinstance(result, RefinedResult)
    summary = result.refinement
    # The image loss at the latent result is the refinement's first; it drops well below it.
    assert summary["latent_loss"] == summary["losses"][0]
    assert summary["refined_loss"] < 0.5 * summary["latent_loss"], summary["losses"]
    assert result.best_loss == summary["refined_loss"]
    latent_error = np.linalg.norm(result.latent_vertices - target, axis=1).mean()
    refined_error = np.linalg.norm(result.vertices - target, axis=1).mean()
    assert refined_error < 0.85 * latent_error, (latent_error, refined_error)
    # The latent code stays; the vertices are the latent ones plus the residual, same order.
    assert np.allclose(result.latent_vertices, space.deform_numpy(result.z))
    assert np.allclose(result.vertices, result.latent_vertices + result.residual)
    moves = np.linalg.norm(result.residual, axis=1)
    assert summary["residual_max"] == pytest.approx(moves.max())
    assert summary["residual_rms"] == pytest.approx(np.sqrt((moves ** 2).mean()))
    # Counted, not assumed: no flipped face, no self-intersection added.
    assert flipped_faces(result.latent_vertices, result.vertices, space.faces) == 0
    before = self_intersections(result.latent_vertices, space.faces)
    assert self_intersections(result.vertices, space.faces) <= before
    assert summary["self_intersections"] == {"before": before, "after": before}
    assert result.timings["refine"] > 0
    assert result.descents[-1]["losses"] == summary["losses"]


@pytest.mark.gl
def test_one_view_reshapes_the_far_side_of_a_symmetric_category(space):
    """The built-in bottle declares its axis; from one view the symmetric residual reshapes the
    whole circumference, the free field mostly what the view shows, so on the half of the mesh
    facing away from the camera the symmetric one ends closer to the (symmetric) target."""
    assert space.symmetry is not None and space.symmetry.axis == (0.0, 0.0, 1.0)
    target = _bulge(space)
    observations, loss_fn, render_fn = _views(space, target, (30.0,))
    pose = observations[0].pose
    towards_camera = -pose.rotation.T @ pose.translation - target.mean(0)
    towards_camera[2] = 0.0
    far = (target - target.mean(0)) @ towards_camera < 0
    errors, kinds = _symmetric_and_free(space, observations, loss_fn, render_fn, target, far)
    assert kinds == {True: "axis", False: "none"}
    assert errors[True][0] == errors[False][0]  # the same latent result
    # Far side, mm: latent 2.43 -> symmetric 1.78, free 2.14 on this fixture; 3.36 -> 1.93,
    # 2.82 on a shape space built with configs/quick.toml's CPD settings.
    assert errors[True][1] < 0.9 * errors[False][1], errors
    assert errors[True][1] < 0.8 * errors[True][0], errors


def _symmetric_and_free(space, observations, loss_fn, render_fn, target: np.ndarray,
                        subset: np.ndarray) -> tuple[dict, dict]:
    """Register with the symmetric and with the free residual (a few latent steps, then 30
    refinement steps); return ({symmetric: (mean error of the `subset` vertices to `target`
    after the latent stage, after the refinement)}, {symmetric: the basis it used})."""
    errors, kinds = {}, {}
    for symmetric in (True, False):
        cfg = RegisterConfig(iterations=4, start="canonical", gif=False, refine="residual",
                             refine_iterations=30, refine_beta=0.3, refine_lambda=1.0,
                             refine_mahalanobis=0.0, refine_learning_rate=0.05,
                             refine_symmetric=symmetric)
        result = register(space, observations, loss_fn, render_fn, cfg, torch.device("cpu"))
        assert isinstance(result, RefinedResult)
        assert result.refinement["symmetric"] is symmetric
        kinds[symmetric] = result.refinement["symmetry"]
        errors[symmetric] = tuple(
            float(np.linalg.norm(v[subset] - target[subset], axis=1).mean())
            for v in (result.latent_vertices, result.vertices))
    return errors, kinds


def _side_bumps(space: ShapeSpace, centre_y: float) -> np.ndarray:
    """Return target vertices (V, 3): the canonical's code plus two bulges of the upper body
    (25 % of the local radius), at +-60 degrees from +x about the axis: mirror images of each
    other about the plane y = centre_y, not a solid of revolution; latent-space part removed."""
    v0 = space.deform_numpy(space.canonical_code)
    angle = np.degrees(np.arctan2(v0[:, 1] - centre_y, v0[:, 0] - v0[:, 0].mean()))
    return _bulge(space, 0.6, 0.2, np.exp(-((np.abs(angle) - 60.0) / 25.0) ** 2))


@pytest.mark.gl
def test_one_view_reshapes_the_hidden_mirror_image_for_a_mirror_symmetric_category(space):
    """A category with a mirror plane and no axis (as the built-in drill declares; here the
    bottle with its axis replaced by the plane y = 0) gets a mirror-symmetric residual: one view
    that shows one of two mirror-image bulges in its outline (camera at azimuth 150 degrees,
    the bulge at +60 on the outline, the one at -60 facing away) reshapes the hidden one too,
    which the free field leaves at the latent shape."""
    from dataclasses import replace

    from regtool.data.manifest import Mirror

    centre_y = float(space.canonical_vertices[:, 1].mean())
    mirrored = replace(space, symmetry=None, mirror=Mirror((0.0, 1.0, 0.0), (0.0, centre_y, 0.0)))
    target = _side_bumps(mirrored, centre_y)
    observations, loss_fn, render_fn = _views(mirrored, target, (150.0,))
    bump = np.linalg.norm(target - mirrored.deform_numpy(mirrored.canonical_code), axis=1)
    hidden = (target[:, 1] < centre_y) & (bump > 0.3 * bump.max())  # the bulge at -60

    errors, kinds = _symmetric_and_free(mirrored, observations, loss_fn, render_fn, target,
                                        hidden)
    assert kinds == {True: "mirror", False: "none"}
    assert errors[True][0] == errors[False][0]  # the same latent result
    # Hidden bulge, mm: latent 5.23 -> mirror 3.27, free 5.26 on this fixture.
    assert errors[True][1] < 0.8 * errors[False][1], errors
    assert errors[True][1] < 0.8 * errors[True][0], errors


@pytest.mark.gl
def test_refine_none_is_the_latent_result(space):
    target = _bulge(space)
    observations, loss_fn, render_fn = _views(space, target, (30.0,))
    cfg = RegisterConfig(iterations=2, start="canonical", gif=False)
    result = register(space, observations, loss_fn, render_fn, cfg, torch.device("cpu"))
    assert not isinstance(result, RefinedResult)
    assert np.array_equal(result.vertices, space.deform_numpy(result.z))
    assert refinement_record(result, "m") == {"method": "none", "units": "m",
                                              "residual_rms": 0.0, "residual_max": 0.0}


def test_mahalanobis_of_the_total_field(space):
    """M(R) = sum_j (z_j + (P R)_j)^2 / var_j: a residual inside the latent space counts as a
    change of the code, one orthogonal to it not at all (the coherence term bounds it)."""
    from regtool.registration.refine import Mahalanobis

    z = np.asarray(space.train_codes[0], np.float64)
    var = np.asarray(space.explained_variance)
    m = Mahalanobis(space, z, torch.device("cpu"))
    zero = torch.zeros(space.num_vertices, 3, dtype=torch.float64)
    assert float(m(zero)) == pytest.approx(float((z ** 2 / var).sum()))
    dz = np.zeros_like(z)
    dz[1] = 0.5 * np.sqrt(var[1])
    inside = torch.as_tensor(np.einsum("k,kvc->vc", dz, space.basis))
    assert float(m(inside)) == pytest.approx(float(((z + dz) ** 2 / var).sum()))
    a = space.basis.reshape(space.latent_dim, -1).T
    rng = np.random.default_rng(0)
    flat = rng.normal(size=a.shape[0]) * 1e-3
    flat -= a @ np.linalg.lstsq(a, flat, rcond=None)[0]
    outside = torch.as_tensor(flat.reshape(-1, 3))
    assert float(m(outside)) == pytest.approx(float((z ** 2 / var).sum()), rel=1e-9)
    assert float(m(inside + outside)) == pytest.approx(float(((z + dz) ** 2 / var).sum()),
                                                       rel=1e-9)


def test_the_mesh_guard_shrinks_a_folding_residual(space):
    latent = space.deform_numpy(space.canonical_code)
    basis = residual_basis(space.canonical_vertices, 0.3, 32, torch.device("cpu"))
    # A huge smooth field: squeezing the body through itself along x.
    c = torch.zeros(basis.rank, 3, dtype=torch.float64)
    c[:, 0] = torch.linspace(-40.0, 40.0, basis.rank, dtype=torch.float64)
    residual = basis.field(c).numpy()
    assert flipped_faces(latent, latent + residual, space.faces) > 0
    safe, check = safe_residual(latent, residual, space.faces)
    assert check["shrinks"] > 0 and check["factor"] == pytest.approx(0.5 ** check["shrinks"]
                                                                     if check["shrinks"] <= 8
                                                                     else 0.0)
    assert np.allclose(safe, check["factor"] * residual)
    assert flipped_faces(latent, latent + safe, space.faces) == 0
    assert self_intersections(latent + safe, space.faces) <= self_intersections(latent,
                                                                                space.faces)
    small = 1e-3 * residual / np.abs(residual).max()
    kept, check = safe_residual(latent, small, space.faces)
    assert check["shrinks"] == 0 and np.array_equal(kept, small)


def test_residual_basis_is_the_kernel_in_whitened_weights(space):
    """R = s Q diag(lam)^1/2 C with Q orthonormal: |C| bounds every vertex's move (RMS radii)
    and the basis reproduces the Gaussian kernel of CPD."""
    from regtool.shapespace.cpd import gaussian_kernel

    basis = residual_basis(space.canonical_vertices, 0.5, 40, torch.device("cpu"))
    assert torch.allclose(basis.q.T @ basis.q, torch.eye(basis.rank, dtype=torch.float64),
                          atol=1e-8)
    y = torch.tensor(space.canonical_vertices)
    y = (y - y.mean(0)) / basis.scale
    idx = torch.arange(0, len(y), max(1, len(y) // 50))
    g = gaussian_kernel(y[idx], y[idx], 0.5)
    approx = (basis.q[idx] * basis.sqrt_lam ** 2) @ basis.q[idx].T
    assert float((g - approx).abs().max()) < 0.05
    c = torch.randn(basis.rank, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    moves = basis.field(c).norm(dim=1)
    assert float(moves.max()) <= basis.scale * float(c.norm()) * 1.0001


def test_symmetric_residual_keeps_a_solid_of_revolution():
    """With a symmetry axis every residual is symmetric about it: rotating the mesh by one
    sector maps the displaced mesh onto itself, and vertices on the axis move along it only."""
    import trimesh

    from regtool.data.manifest import Symmetry

    sections = 24
    profile = np.array([[0.0, 0.0], [0.04, 0.0], [0.045, 0.03], [0.03, 0.08], [0.015, 0.1],
                        [0.015, 0.12], [0.0, 0.12]])  # (radius, height): a bottle
    mesh = trimesh.creation.revolve(profile, sections=sections)
    vertices = np.asarray(mesh.vertices) + [0.0, 0.0, 0.03]
    axis_point = (0.0, 0.0, 0.03)
    basis = residual_basis(vertices, 0.3, 40, torch.device("cpu"),
                           Symmetry((0.0, 0.0, 1.0), axis_point))
    assert basis.symmetric
    c = torch.randn(basis.rank, 3, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    field = basis.field(c).numpy()
    assert np.abs(field).max() > 1e-4
    angle = 2 * np.pi / sections
    turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                     [0.0, 0.0, 1.0]])
    image = vertices @ turn.T
    nearest = np.argmin(np.linalg.norm(image[:, None] - vertices[None], axis=2), axis=1)
    assert np.allclose(vertices[nearest], image, atol=1e-9)  # the mesh maps onto itself
    np.testing.assert_allclose(field[nearest], field @ turn.T, atol=1e-9)
    on_axis = np.linalg.norm(vertices[:, :2], axis=1) < 1e-12
    assert on_axis.any() and np.allclose(field[on_axis, :2], 0.0)
    free = residual_basis(vertices, 0.3, 40, torch.device("cpu"))
    assert not free.symmetric
    free_field = free.field(torch.randn(free.rank, 3, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(1))).numpy()
    assert not np.allclose(free_field[nearest], free_field @ turn.T, atol=1e-6)


def test_mirror_residual_is_mirror_symmetric():
    """With a mirror plane every residual is mirror symmetric: the displacement of a vertex's
    mirror image is the mirror image of its displacement, and vertices on the plane move within
    it; the free field does not have the property."""
    import trimesh

    from regtool.data.manifest import Mirror

    mesh = trimesh.creation.box((0.08, 0.06, 0.12))
    mesh = mesh.subdivide().subdivide().subdivide()
    vertices = np.asarray(mesh.vertices) + [0.01, 0.02, 0.0]  # plane y = 0.02
    plane = Mirror((0.0, 1.0, 0.0), (0.0, 0.02, 0.0))
    basis = residual_basis(vertices, 0.3, 40, torch.device("cpu"), mirror=plane)
    assert basis.symmetric and basis.symmetry == "mirror"
    c = torch.randn(basis.rank, 3, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    field = basis.field(c).numpy()
    assert np.abs(field).max() > 1e-4
    image = vertices * [1.0, -1.0, 1.0] + [0.0, 0.04, 0.0]
    nearest = np.argmin(np.linalg.norm(image[:, None] - vertices[None], axis=2), axis=1)
    assert np.allclose(vertices[nearest], image, atol=1e-9)  # the mesh maps onto itself
    np.testing.assert_allclose(field[nearest], field * [1.0, -1.0, 1.0], atol=1e-9)
    on_plane = np.abs(vertices[:, 1] - 0.02) < 1e-12
    assert on_plane.any() and np.allclose(field[on_plane, 1], 0.0)
    free = residual_basis(vertices, 0.3, 40, torch.device("cpu"))
    free_field = free.field(torch.randn(free.rank, 3, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(2))).numpy()
    assert not np.allclose(free_field[nearest], free_field * [1.0, -1.0, 1.0], atol=1e-6)
    # The axis wins over the plane: a solid of revolution keeps its own basis.
    from regtool.data.manifest import Symmetry

    both = residual_basis(vertices, 0.3, 40, torch.device("cpu"),
                          Symmetry((0.0, 0.0, 1.0)), plane)
    assert both.symmetry == "axis"


@pytest.mark.parametrize("key, value, fragment", [
    ("refine", "cpd", "register.refine"),
    ("refine_beta", 0.0, "register.refine_beta"),
    ("refine_lambda", -1.0, "register.refine_lambda"),
    ("refine_iterations", 0, "register.refine_iterations"),
    ("refine_rank", 1.5, "register.refine_rank"),
    ("refine_mahalanobis", "yes", "register.refine_mahalanobis"),
])
def test_refine_config_is_validated(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(overrides={"register": {key: value}})


def test_views_config_is_validated():
    assert load_config(overrides={"evaluate": {"views": 3}}).evaluate.views == 3
    assert load_config(overrides={"evaluate": {"noise_draws": 0}}).evaluate.noise_draws == 0
    with pytest.raises(ConfigError, match=r"evaluate\.views"):
        load_config(overrides={"evaluate": {"views": 0}})
