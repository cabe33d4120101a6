"""ShapeSpace: PCA basis reproduces the CPD fields, exact gradients, projection, the 3D fit,
save/load and rejection of corrupted or foreign files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from regtool.config import ShapeSpaceConfig
from regtool.errors import ArtifactError, MeshError
from regtool.geometry.sampling import sample_surface
from regtool.shapespace.build import shapespace_from_meshes
from regtool.shapespace.cpd import gaussian_kernel, nonrigid_cpd
from regtool.shapespace.fit import fit_points
from regtool.shapespace.space import ShapeSpace, pca_shape_space


def axis_angle_to_matrix(v):
    return Rotation.from_rotvec(v).as_matrix()

N_TRAIN = 5


def instance(i: int) -> trimesh.Trimesh:
    """A smoothly deformed sphere (radius ~0.05 m): the training meshes of a toy category."""
    m = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    v = m.vertices.copy()
    a, b, c = 0.1 * np.sin(i + 1.0), 0.1 * np.cos(2.0 * i), 0.05 * (i - 2)
    v = v * np.array([1.0 + a, 1.0 - a / 2, 1.0 + b]) + c * np.stack(
        [v[:, 2] ** 2 * 10, np.zeros(len(v)), v[:, 0] * 0.5], 1)
    return trimesh.Trimesh(v, m.faces, process=False)


@pytest.fixture(scope="module")
def canonical():
    m = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)


@pytest.fixture(scope="module")
def fields(canonical):
    """Template points and the CPD results (W_i, d_i at the canonical vertices) per instance."""
    cv, cf = canonical
    rng = np.random.default_rng(0)
    y = sample_surface(cv, cf, 150, rng)
    ws, ds = [], []
    for i in range(N_TRAIN):
        m = instance(i)
        x = sample_surface(m.vertices, m.faces, 150, rng)
        res = nonrigid_cpd(y, x, max_iterations=40)
        ws.append(res.W.numpy())
        ds.append(res.field(cv).numpy())
    return y, np.stack(ws), np.stack(ds)


def make_space(canonical, fields, k: int, kind: str = "displacement") -> ShapeSpace:
    cv, cf = canonical
    y, ws, ds = fields
    beta = nonrigid_cpd(y, y, max_iterations=1).beta  # kernel width in metres for this Y
    kv = gaussian_kernel(torch.as_tensor(cv), torch.as_tensor(y), beta).numpy()
    return pca_shape_space(category="toy", units="m", canonical_vertices=cv, faces=cf,
                           template_points=y, displacements=ds, weights=ws,
                           kernel_at_vertices=kv, train_names=[f"t{i}" for i in range(N_TRAIN)],
                           latent_dim=k, basis_kind=kind)


def test_deform_reproduces_the_cpd_fields(canonical, fields):
    cv, _ = canonical
    _, _, ds = fields
    full = make_space(canonical, fields, k=10)  # clamped to n_train - 1: exact
    assert full.latent_dim == N_TRAIN - 1
    out = full.deform(torch.tensor(full.train_codes))  # batched (n, k) -> (n, V, 3)
    np.testing.assert_allclose(out.numpy(), cv + ds, atol=1e-12)
    for i in range(N_TRAIN):
        np.testing.assert_allclose(full.project(ds[i]), full.train_codes[i], atol=1e-9)
    # truncated: the error is exactly the part of d_i outside the span of the basis
    small = make_space(canonical, fields, k=2)
    rec = small.deform_numpy(small.train_codes) - cv
    err = np.linalg.norm((rec - ds).reshape(N_TRAIN, -1), axis=1)
    resid = (ds - small.mean_displacement).reshape(N_TRAIN, -1)
    b = small.basis.reshape(2, -1)
    expect = np.linalg.norm(resid - (resid @ b.T) @ b, axis=1)
    np.testing.assert_allclose(err, expect, rtol=1e-8, atol=1e-12)
    assert err.max() > 0
    # the canonical's code: the least-squares code of a zero displacement
    np.testing.assert_allclose(small.canonical_code, small.project(np.zeros_like(cv)))
    assert np.linalg.norm(full.deform_numpy(full.canonical_code) - cv) < \
        np.linalg.norm(full.deform_numpy(np.zeros(full.latent_dim)) - cv)


def test_weights_basis_is_also_exact_at_full_rank(canonical, fields):
    cv, _ = canonical
    sp = make_space(canonical, fields, k=N_TRAIN - 1, kind="weights")
    np.testing.assert_allclose(sp.deform_numpy(sp.train_codes), cv + fields[2], atol=1e-10)


def test_deform_gradient_dtype_and_shape(canonical, fields):
    sp = make_space(canonical, fields, k=3)
    z = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sp.deform, (z,))
    z32 = torch.zeros(3, dtype=torch.float32)
    assert sp.deform(z32).dtype == torch.float32 and sp.deform(z32).shape == (sp.num_vertices, 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        sp.deform(torch.zeros(4))


def test_fit_points_recovers_code_and_pose(canonical, fields):
    sp = make_space(canonical, fields, k=N_TRAIN - 1)
    z_true = sp.train_codes[1] * 0.7 + sp.train_codes[3] * 0.3
    verts = sp.deform_numpy(z_true)
    pts = sample_surface(verts, sp.faces, 3000, np.random.default_rng(3))
    fit = fit_points(sp, pts, iterations=100)  # pose known (identity)
    base_err = np.linalg.norm(sp.deform_numpy(sp.canonical_code) - verts, axis=1).mean()
    fit_err = np.linalg.norm(sp.deform_numpy(fit.z) - verts, axis=1).mean()
    start = fit_points(sp, pts, iterations=0)
    assert fit_err < 0.25 * base_err, (fit_err, base_err)
    assert fit.loss < start.loss and fit.mean_distance < start.mean_distance
    # observed in a rotated, shifted frame; start from a perturbed pose and optimise it
    rot = axis_angle_to_matrix(np.array([0.2, -0.1, 0.3]))
    t = np.array([0.01, -0.02, 0.3])
    obs = pts @ rot.T + t
    init = (axis_angle_to_matrix(np.array([0.2, -0.1, 0.3]) + 0.08), t + 0.005)
    fit = fit_points(sp, obs, pose=init, optimise_pose=True, iterations=100)
    start = fit_points(sp, obs, pose=init, iterations=0)
    # the toy shape is nearly a sphere, so the rotation is poorly determined: check the fitted
    # surface and the translation
    assert np.linalg.norm(fit.translation - t) < 0.003
    assert fit.mean_distance < 0.5 * start.mean_distance, (fit.mean_distance, start.mean_distance)
    assert np.allclose(fit.rotation @ fit.rotation.T, np.eye(3), atol=1e-9)
    with pytest.raises(MeshError, match="NaN"):
        fit_points(sp, np.full((5, 3), np.nan))


def test_save_load_roundtrip_and_bad_files(tmp_path, canonical, fields):
    sp = make_space(canonical, fields, k=3)
    path = sp.save(tmp_path / "s.npz", report={"hello": 1})
    side = json.loads((tmp_path / "s.json").read_text())
    assert side["report"] == {"hello": 1} and side["latent_dim"] == 3
    back = ShapeSpace.load(path)
    for name in ("canonical_vertices", "faces", "basis", "train_codes", "canonical_code"):
        np.testing.assert_array_equal(getattr(back, name), getattr(sp, name))
    assert back.train_names == sp.train_names and back.category == "toy"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temporary left behind

    with pytest.raises(ArtifactError, match="not found"):
        ShapeSpace.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ArtifactError, match="corrupted"):
        ShapeSpace.load(tmp_path / "junk.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupted"):
        ShapeSpace.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(ArtifactError, match="not a regtool shape space"):
        ShapeSpace.load(tmp_path / "foreign.npz")
    arrays = dict(np.load(path))
    arrays["basis"] = arrays["basis"][:, :-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ArtifactError, match="inconsistent"):
        ShapeSpace.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("key", ["symmetry", "mirror"])
def test_symmetry_is_kept_and_older_files_still_load(tmp_path, canonical, fields, key):
    """The category's symmetry axis and mirror plane travel with the shape space (the residual
    refinement reads them there); a file written before they were kept loads with none, a
    malformed one is refused."""
    from dataclasses import replace

    from regtool.data.manifest import Mirror, Symmetry

    declared = {"symmetry": Symmetry((0.0, 0.0, 1.0), (0.001, 0.0, -0.1)),
                "mirror": Mirror((0.0, 1.0, 0.0), (0.0, 0.002, 0.0))}[key]
    bad = {"symmetry": [{"axis": [0, 0, 0]}, {"axis": [0, 0, 1], "tilt": 3}],
           "mirror": [{"normal": [0, 0, 0]}, {"normal": [0, 1, 0], "tilt": 3}]}[key]
    path = replace(make_space(canonical, fields, k=3), **{key: declared}).save(tmp_path / "s.npz")
    assert getattr(ShapeSpace.load(path), key) == declared
    assert json.loads((tmp_path / "s.json").read_text())[key] == declared.to_dict()
    arrays = dict(np.load(path))
    meta = json.loads(str(arrays["metadata"]))
    for value, loads in ((None, True), ("missing", True), (bad[0], False), (bad[1], False)):
        if value == "missing":
            meta.pop(key)
        else:
            meta[key] = value
        arrays["metadata"] = np.array(json.dumps(meta))
        np.savez(tmp_path / "old.npz", **arrays)
        if loads:
            assert getattr(ShapeSpace.load(tmp_path / "old.npz"), key) is None
        else:
            with pytest.raises(ArtifactError, match=f"malformed metadata: {key}"):
                ShapeSpace.load(tmp_path / "old.npz")


@pytest.mark.parametrize("category", ["bottle", "drill"])
def test_build_keeps_the_manifest_symmetry(dataset_dir, category):
    from regtool.config import ShapeSpaceConfig
    from regtool.data.manifest import read_manifest
    from regtool.shapespace.build import build_shapespace

    config = ShapeSpaceConfig(template_points=200, target_points=200, max_iterations=5)
    space, _ = build_shapespace(dataset_dir, category, config, seed=0)
    declared = read_manifest(dataset_dir).category(category)
    assert (declared.symmetry, declared.mirror) == (space.symmetry, space.mirror)
    assert (declared.symmetry is not None) == (category == "bottle")
    assert (declared.mirror is not None) == (category == "drill")


def test_from_meshes_rejects_a_single_instance(canonical):
    m = instance(0)
    with pytest.raises(MeshError, match="at least 2"):
        shapespace_from_meshes(canonical, {"a": (m.vertices, m.faces)}, ShapeSpaceConfig(), 0)
