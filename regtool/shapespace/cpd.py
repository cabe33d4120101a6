"""Non-rigid Coherent Point Drift (Myronenko & Song, TPAMI 2010) in torch.

The template Y (M, 3) is moved towards the target X (N, 3) by the displacement field
``v(Z) = G(Y, Z) W`` with the Gaussian kernel ``g_ij = exp(-|y_i - z_j|^2 / (2 beta^2))``
(StilllebenDR Eq. 6-7). EM as in the paper's Fig. 4 (and `pycpd.DeformableRegistration`):

* E-step: posterior P (M, N) of template point m for target point n, with a uniform outlier
  component of weight w; computed in chunks of target columns, so memory stays at
  ``M * chunk`` numbers instead of ``M * N``; only P1 = P 1, Pt1 = P^T 1 and P X are kept.
* M-step (full kernel): solve ``(diag(P1) G + lambda sigma^2 I) W = P X - diag(P1) Y``, done as
  a Cholesky solve of the symmetric ``(D G D + lambda sigma^2 I) U = D^-1 B``, ``W = D U`` with
  ``D = diag(sqrt(P1))`` (LU fallback if Cholesky fails).
* M-step (low-rank kernel, Myronenko & Song Sec. 4.2): ``G ~ Q Lambda Q^T`` with the top-k
  eigenpairs, solved with the Woodbury identity in O(M k^2); the eigenpairs come from a Nystroem
  approximation on farthest-point landmarks (no M x M matrix is ever formed).
* Variance update (Eq. 23) and stop when ``|sigma2 - sigma2_prev| <= tolerance`` (in normalised
  units) or after ``max_iterations``, as pycpd does.

Both point sets are normalised with the template's centroid and RMS radius before the EM, so
beta, lambda, the tolerance and sigma^2 act on an object of unit size whatever its units; the
result is mapped back to the input units (see `CPDResult`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from regtool.errors import MeshError

_CHUNK_BYTES = 128 * 2 ** 20  # E-step working block: M x chunk numbers
_MIN_EXPONENT = -690.0  # exp(-690) ~ 1e-300, still a normal float64
# Below this many M x N entries the CPU run uses one thread: each op then takes well under a
# millisecond and, on a shared machine, OpenMP's barriers between descheduled threads cost
# more than the parallel work saves (measured 15x slower with 2 threads at M = N = 250).
_SINGLE_THREAD_BELOW = 4_000_000


@dataclass(frozen=True)
class CPDResult:
    """Result of `nonrigid_cpd`, in the input units (e.g. metres).

    W: (M, 3) kernel weights such that the displacement of any point z is
    ``v(z) = sum_m exp(-|y_m - z|^2 / (2 beta^2)) W_m`` with `beta` in input units.
    sigma2: final GMM variance (input units^2). iterations: EM iterations run.
    transformed: (M, 3) the moved template Y + v(Y) as computed by the EM (low-rank kernel
    when `lowrank` is set). template: (M, 3) Y. beta: kernel width in input units
    (= normalised beta x scale). centre (3,), scale: the normalisation, x_n = (x - centre) / scale.
    lowrank: the rank of the kernel approximation used, None for the full kernel.
    converged: True if the tolerance stopped the EM before max_iterations.
    """

    W: torch.Tensor
    sigma2: float
    iterations: int
    transformed: torch.Tensor
    template: torch.Tensor
    beta: float
    centre: torch.Tensor
    scale: float
    lowrank: int | None
    converged: bool

    def field(self, points) -> torch.Tensor:
        """Return the displacement v(Z) = G(Y, Z) W (P, 3) at `points` (P, 3), input units;
        dtype and device of W. Evaluated in chunks of points."""
        # A copy of numpy input: a shape space's arrays are read-only.
        z = points.to(self.W) if torch.is_tensor(points) else \
            torch.tensor(np.asarray(points), dtype=self.W.dtype, device=self.W.device)
        if z.ndim != 2 or z.shape[1] != 3:
            raise MeshError(f"field points must have shape (P, 3), got {tuple(z.shape)}")
        yn = (self.template - self.centre) / self.scale
        zn = (z - self.centre) / self.scale
        beta_n = self.beta / self.scale
        chunk = max(1, _CHUNK_BYTES // (8 * max(1, len(yn))))
        out = [gaussian_kernel(zn[s:s + chunk], yn, beta_n) @ self.W
               for s in range(0, len(zn), chunk)]
        return torch.cat(out) if out else torch.zeros_like(z)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    """Return G (A, B) with g_ij = exp(-|a_i - b_j|^2 / (2 beta^2)) for a (A, 3), b (B, 3)."""
    d2 = _sq_dist(a, b)
    return d2.mul_(-1.0 / (2.0 * beta * beta)).exp_()


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return |a_i - b_j|^2 (A, B), clamped at 0 (the expansion can go slightly negative)."""
    a2 = (a * a).sum(1)
    b2 = (b * b).sum(1)
    return torch.addmm(a2[:, None] + b2[None, :], a, b.T, alpha=-2.0).clamp_(min=0.0)


def _check_points(p, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(p, dtype=dtype, device=device)
    if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] < 1:
        raise MeshError(f"{name} points must have shape (N>=1, 3), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise MeshError(f"{name} points contain NaN or infinite coordinates")
    return t


def farthest_points(points: torch.Tensor, count: int) -> torch.Tensor:
    """Return `count` indices (int64) of a farthest-point sampling of points (M, 3), starting
    at index 0 (deterministic)."""
    m = len(points)
    count = min(count, m)
    idx = torch.zeros(count, dtype=torch.long, device=points.device)
    dist = torch.full((m,), float("inf"), dtype=points.dtype, device=points.device)
    cur = 0
    for i in range(count):
        idx[i] = cur
        dist = torch.minimum(dist, ((points - points[cur]) ** 2).sum(1))
        cur = int(torch.argmax(dist))
    return idx


def lowrank_kernel(y: torch.Tensor, beta: float, rank: int,
                   rel_cutoff: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (Q (M, k), lam (k,)) with G(Y, Y) ~ Q diag(lam) Q^T, Q orthonormal, lam
    descending, k <= rank (eigenvalues below rel_cutoff x the largest are dropped).

    Nystroem approximation on max(2 rank, rank + 50) farthest-point landmarks (exact
    eigendecomposition when that covers all M points); cost O(M m^2), no M x M matrix.
    """
    m = min(len(y), max(2 * rank, rank + 50))
    lm = y[farthest_points(y, m)]
    c = gaussian_kernel(y, lm, beta)  # (M, m)
    s, u = torch.linalg.eigh(gaussian_kernel(lm, lm, beta))
    keep = s > rel_cutoff * s.max()
    f = c @ (u[:, keep] / s[keep].sqrt())  # G ~ F F^T
    e, v = torch.linalg.eigh(f.T @ f)
    e, v = e.flip(0), v.flip(1)
    k = int(min(rank, (e > rel_cutoff * e[0]).sum()))
    lam = e[:k]
    q = f @ (v[:, :k] / lam.sqrt())
    q, _ = torch.linalg.qr(q)  # re-orthonormalise against rounding
    return q, lam


def nonrigid_cpd(template, target, *, beta: float = 2.0, lambda_: float = 2.0, w: float = 0.0,
                 tolerance: float = 1e-5, max_iterations: int = 150, lowrank: int | None = None,
                 lowrank_threshold: int = 4000, lowrank_rank: int = 300,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                 sigma2: float | None = None, threads: int | None = None,
                 callback: Callable[..., None] | None = None) -> CPDResult:
    """Register `template` Y (M, 3) to `target` X (N, 3) with non-rigid CPD; return CPDResult.

    beta (kernel width), lambda_ (regularisation, pycpd's alpha), tolerance and sigma2 (initial
    variance; default as pycpd: mean squared distance over all pairs / 3) refer to the
    normalised point sets (template centroid at 0, template RMS radius 1). w in [0, 1): outlier
    weight. lowrank: None = automatic (rank `lowrank_rank` when M > lowrank_threshold), 0 = full
    kernel, k > 0 = rank-k kernel. callback(iteration=int, sigma2=float, diff=float) after each
    EM iteration (normalised units). threads: torch CPU threads for this call (restored
    afterwards); None = 1 below M x N = 4e6, torch's setting above. Raises MeshError for bad or
    non-finite points.
    """
    device = torch.device(device)
    if threads is None:
        m_n = len(template) * len(target)
        threads = 1 if m_n < _SINGLE_THREAD_BELOW else torch.get_num_threads()
    if device.type != "cpu" or threads == torch.get_num_threads():
        return _nonrigid_cpd(template, target, beta, lambda_, w, tolerance, max_iterations,
                             lowrank, lowrank_threshold, lowrank_rank, device, dtype, sigma2,
                             callback)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _nonrigid_cpd(template, target, beta, lambda_, w, tolerance, max_iterations,
                             lowrank, lowrank_threshold, lowrank_rank, device, dtype, sigma2,
                             callback)
    finally:
        torch.set_num_threads(before)


def _nonrigid_cpd(template, target, beta, lambda_, w, tolerance, max_iterations, lowrank,
                  lowrank_threshold, lowrank_rank, device, dtype, sigma2, callback) -> CPDResult:
    device = torch.device(device)
    y_in = _check_points(template, "template", dtype, device)
    x_in = _check_points(target, "target", dtype, device)
    if not 0.0 <= w < 1.0:
        raise ValueError(f"w must be in [0, 1), got {w}")
    if beta <= 0 or lambda_ <= 0:
        raise ValueError(f"beta and lambda_ must be positive, got {beta}, {lambda_}")
    centre = y_in.mean(0)
    scale = float(((y_in - centre) ** 2).sum(1).mean().sqrt())
    if not scale > 0:
        raise MeshError("template points are degenerate (all identical)")
    y = (y_in - centre) / scale
    x = (x_in - centre) / scale
    m, n, d = len(y), len(x), 3
    rank = (lowrank_rank if m > lowrank_threshold else 0) if lowrank is None else int(lowrank)

    if rank > 0:
        q, lam = lowrank_kernel(y, beta, rank)
        rank = len(lam)
        g = None
    else:
        g = gaussian_kernel(y, y, beta)
    x2 = (x * x).sum(1)
    if sigma2 is None:
        sigma2 = float((n * (y * y).sum() + m * x2.sum() - 2.0 * (y.sum(0) @ x.sum(0)))
                       / (d * m * n))
    chunk = max(1, _CHUNK_BYTES // (torch.finfo(dtype).bits // 8 * m))
    w_mat = torch.zeros_like(y)
    ty = y.clone()
    diff, it = math.inf, 0
    while it < max_iterations and diff > tolerance:
        p1, pt1, px = _e_step(x, x2, ty, sigma2, w, chunk)
        b = px - p1[:, None] * y
        reg = lambda_ * sigma2
        if g is not None:
            w_mat = _m_step_full(g, p1, b, reg)
            ty = y + g @ w_mat
        else:
            inner = torch.diag(reg / lam) + q.T @ (p1[:, None] * q)
            w_mat = (b - p1[:, None] * (q @ torch.linalg.solve(inner, q.T @ b))) / reg
            ty = y + q @ (lam[:, None] * (q.T @ w_mat))
        np_ = float(p1.sum())
        prev = sigma2
        sigma2 = float((pt1 @ x2 - 2.0 * (ty * px).sum() + p1 @ (ty * ty).sum(1)) / (np_ * d))
        if sigma2 <= 0:
            sigma2 = tolerance / 10.0
        diff = abs(sigma2 - prev)
        it += 1
        if callback is not None:
            callback(iteration=it, sigma2=sigma2, diff=diff)
    return CPDResult(W=w_mat * scale, sigma2=sigma2 * scale * scale, iterations=it,
                     transformed=ty * scale + centre, template=y_in, beta=beta * scale,
                     centre=centre, scale=scale, lowrank=rank if rank > 0 else None,
                     converged=diff <= tolerance)


def _e_step(x: torch.Tensor, x2: torch.Tensor, ty: torch.Tensor, sigma2: float, w: float,
            chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return P1 (M,), Pt1 (N,), P X (M, 3) of the CPD posterior, built chunk by chunk over the
    target points; the normalisation matches pycpd (a zero column sum becomes machine eps)."""
    m, n, d = len(ty), len(x), x.shape[1]
    c = (2.0 * math.pi * sigma2) ** (d / 2.0) * w / (1.0 - w) * m / n
    ty2 = (ty * ty).sum(1)
    p1 = torch.zeros(m, dtype=x.dtype, device=x.device)
    pt1 = torch.empty(n, dtype=x.dtype, device=x.device)
    px = torch.zeros_like(ty)
    eps = torch.finfo(x.dtype).eps
    for s in range(0, n, chunk):
        xc = x[s:s + chunk]
        k = torch.addmm(ty2[:, None] + x2[None, s:s + chunk], ty, xc.T, alpha=-2.0)
        k.clamp_(min=0.0).mul_(-1.0 / (2.0 * sigma2))
        # exp() below ~1e-300 would give subnormal numbers, which make every later operation
        # on them ~10x slower on x86; they are negligible against the column sums: use 0.
        k.masked_fill_(k < _MIN_EXPONENT, -math.inf).exp_()
        den = k.sum(0)
        den = torch.where(den == 0, torch.full_like(den, eps), den) + c
        k.div_(den)
        p1 += k.sum(1)
        pt1[s:s + chunk] = k.sum(0)
        px += k @ xc
    return p1, pt1, px


def _m_step_full(g: torch.Tensor, p1: torch.Tensor, b: torch.Tensor,
                 reg: float) -> torch.Tensor:
    """Return W (M, 3) solving (diag(P1) G + reg I) W = B (Myronenko & Song Eq. 22)."""
    dsq = p1.sqrt().clamp_(min=1e-150)
    s = dsq[:, None] * g * dsq[None, :]
    s.diagonal().add_(reg)
    chol, info = torch.linalg.cholesky_ex(s)
    if int(info) == 0:
        return dsq[:, None] * torch.cholesky_solve(b / dsq[:, None], chol)
    a = p1[:, None] * g
    a.diagonal().add_(reg)
    return torch.linalg.solve(a, b)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Return a float64 numpy copy of a tensor (any device)."""
    return t.detach().to("cpu", torch.float64).numpy()
