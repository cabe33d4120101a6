"""Non-rigid CPD: recovery of a known deformation, agreement with pycpd, low-rank and chunked
variants, normalisation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regtool.errors import MeshError
from regtool.shapespace import cpd as cpd_module
from regtool.shapespace.cpd import gaussian_kernel, lowrank_kernel, nonrigid_cpd


def smooth_field(p: np.ndarray) -> np.ndarray:
    """A smooth deformation of points in the unit box (displacements up to ~0.15)."""
    return 0.1 * np.stack([np.sin(2 * p[:, 1]), np.cos(2 * p[:, 2]) - 1.0, p[:, 0] * p[:, 1]], 1)


def box_points(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=(n, 3))


def normalised(p: np.ndarray) -> np.ndarray:
    p = p - p.mean(0)
    return p / np.sqrt((p ** 2).sum(1).mean())


def test_recovers_a_known_smooth_deformation_in_any_units():
    y = box_points(150, 0)
    truth = y + smooth_field(y)
    x = truth[np.random.default_rng(1).permutation(len(y))]
    size = np.linalg.norm(truth - y, axis=1).mean()
    for scale, shift in ((1.0, 0.0), (1000.0, 250.0)):  # metres and millimetres + offset
        res = nonrigid_cpd(y * scale + shift, x * scale + shift, beta=2.0, lambda_=2.0,
                           tolerance=1e-8, max_iterations=150)
        moved = (res.transformed.numpy() - shift) / scale
        err = np.linalg.norm(moved - truth, axis=1).mean()
        assert err < 0.1 * size, (err, size)
        # the field evaluated at Y is the EM's displacement, in the input units
        np.testing.assert_allclose(res.field(y * scale + shift).numpy(),
                                   res.transformed.numpy() - (y * scale + shift),
                                   atol=1e-9 * scale)
    # normalisation: the millimetre run is the metre run, scaled
    r_m = nonrigid_cpd(y, x, tolerance=0.0, max_iterations=10)
    r_mm = nonrigid_cpd(y * 1000.0 + 250.0, x * 1000.0 + 250.0, tolerance=0.0, max_iterations=10)
    np.testing.assert_allclose((r_mm.transformed.numpy() - 250.0) / 1000.0,
                               r_m.transformed.numpy(), atol=1e-9)
    assert r_mm.sigma2 == pytest.approx(r_m.sigma2 * 1e6, rel=1e-8)


@pytest.mark.parametrize("w", [0.0, 0.1])
def test_agrees_with_pycpd(w):
    from pycpd import DeformableRegistration

    y = normalised(box_points(150, 2))
    x = normalised(box_points(120, 3) + smooth_field(box_points(120, 3)))
    # the data are already normalised (centroid 0, RMS radius 1 for Y), so pycpd sees the same
    # problem in its own (unnormalised) conventions
    res = nonrigid_cpd(y, x, beta=1.5, lambda_=3.0, w=w, tolerance=1e-6, max_iterations=40)
    reg = DeformableRegistration(X=x, Y=y, alpha=3.0, beta=1.5, w=w, tolerance=1e-6,
                                 max_iterations=40)
    ty, (_, w_ref) = reg.register()
    assert res.iterations == reg.iteration
    assert np.abs(res.transformed.numpy() - ty).max() < 1e-8
    assert np.abs(res.W.numpy() / res.scale - w_ref).max() < 1e-6 * np.abs(w_ref).max()
    assert res.sigma2 / res.scale ** 2 == pytest.approx(reg.sigma2, rel=1e-8)


def test_lowrank_and_chunked_variants_match_the_full_kernel(monkeypatch):
    y = box_points(250, 4)
    x = box_points(200, 5) + smooth_field(box_points(200, 5))
    full = nonrigid_cpd(y, x, tolerance=0.0, max_iterations=20, lowrank=0)
    assert full.lowrank is None
    auto = nonrigid_cpd(y, x, tolerance=0.0, max_iterations=20, lowrank_threshold=100,
                        lowrank_rank=120)
    assert auto.lowrank is not None and auto.lowrank <= 120
    assert np.abs(auto.transformed.numpy() - full.transformed.numpy()).max() < 1e-6
    # kernel approximation itself
    yt = torch.as_tensor(normalised(y))
    q, lam = lowrank_kernel(yt, 2.0, 60)
    g = gaussian_kernel(yt, yt, 2.0)
    err = torch.linalg.matrix_norm(g - q @ torch.diag(lam) @ q.T)
    assert err < 1e-7 * torch.linalg.matrix_norm(g)  # 60th eigenvalue ~ 1e-8 of the largest
    # E-step in chunks of a few columns: same numbers
    monkeypatch.setattr(cpd_module, "_CHUNK_BYTES", 8 * 250 * 7)
    chunked = nonrigid_cpd(y, x, tolerance=0.0, max_iterations=20, lowrank=0)
    assert np.abs(chunked.transformed.numpy() - full.transformed.numpy()).max() < 1e-12


def test_callback_and_float32():
    seen = []
    y = box_points(100, 6)
    res = nonrigid_cpd(y, y + 0.05, max_iterations=5, tolerance=0.0, dtype=torch.float32,
                       callback=lambda **kw: seen.append(kw["iteration"]))
    assert seen == [1, 2, 3, 4, 5] and res.iterations == 5
    assert res.W.dtype == torch.float32 and res.transformed.shape == (100, 3)


def test_bad_points_raise_mesh_error():
    y = box_points(50, 7)
    bad = y.copy()
    bad[3, 1] = np.nan
    with pytest.raises(MeshError, match="NaN"):
        nonrigid_cpd(y, bad)
    with pytest.raises(MeshError, match="shape"):
        nonrigid_cpd(y, np.zeros((0, 3)))
    with pytest.raises(MeshError, match="degenerate"):
        nonrigid_cpd(np.ones((10, 3)), y)
