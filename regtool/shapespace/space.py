"""The latent shape space of a category: an affine map from a latent code z (k,) to the vertices
of the deformed canonical mesh, ``vertices(z) = V_c + D0 + sum_j z_j D_j`` (DESIGN.md, Shape
space; StilllebenDR Sec. 3.2.2 with PCA over displacement fields instead of kernel weights).

Arrays are float64 numpy in the dataset's units (`units`, e.g. 'm'); `deform` is the torch twin
used by registration. Saved as ``.npz`` (every array plus the metadata as a JSON string; loads
with ``allow_pickle=False``) and a human-readable ``.json`` sidecar next to it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtool.errors import ArtifactError, MeshError
from regtool.io import write_atomic, write_json_atomic

FORMAT = "regtool-shapespace"
VERSION = 1
_ARRAYS = ("canonical_vertices", "faces", "template_points", "mean_displacement", "basis",
           "explained_variance", "explained_variance_ratio", "train_codes", "canonical_code",
           "pca_mean", "pca_components")


@dataclass(frozen=True)
class FitResult:
    """Result of `ShapeSpace.fit_points`.

    z (k,) latent code; rotation (3, 3), translation (3,): object -> frame pose of the fitted
    model (frame = the frame of the fitted points); loss: final chamfer objective (mean squared
    closest-point distances, units^2); mean_distance: mean closest-point distance from the points
    to the fitted model's vertices (units); iterations run.
    """

    z: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    loss: float
    mean_distance: float
    iterations: int


@dataclass(eq=False)
class ShapeSpace:
    """A category's latent shape space (all arrays float64 unless noted, in `units`).

    canonical_vertices (V, 3), faces (F, 3) int64: the canonical mesh V_c.
    template_points (M, 3): the CPD template Y sampled on the canonical.
    mean_displacement (V, 3): D0. basis (k, V, 3): D_j (orthonormal when flattened, for
    basis_kind 'displacement'). explained_variance (k,) (units^2) and explained_variance_ratio
    (k,) of the PCA. train_codes (n, k): the codes z_i of the training instances, train_names
    (n,). canonical_code (k,): z_c, the code of the undeformed canonical (z = 0 is the mean
    shape). pca_mean (P,), pca_components (k, P): the PCA in its own space (displacements at the
    vertices, or kernel weights for basis_kind 'weights'). cpd_params: the CPD settings;
    input_hashes: sha256 of the meshes read.
    """

    category: str
    units: str
    canonical_vertices: np.ndarray
    faces: np.ndarray
    template_points: np.ndarray
    mean_displacement: np.ndarray
    basis: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    train_codes: np.ndarray
    train_names: tuple[str, ...]
    canonical_code: np.ndarray
    pca_mean: np.ndarray
    pca_components: np.ndarray
    basis_kind: str = "displacement"
    cpd_params: dict[str, Any] = field(default_factory=dict)
    input_hashes: dict[str, str] = field(default_factory=dict)
    version: int = VERSION
    _torch_cache: dict = field(default_factory=dict, repr=False)

    @property
    def latent_dim(self) -> int:
        """k, the number of latent dimensions."""
        return int(self.basis.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.canonical_vertices.shape[0])

    # -- the affine map -------------------------------------------------------------------
    def _tensors(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = (dtype, str(device))
        if key not in self._torch_cache:
            base = torch.as_tensor(self.canonical_vertices + self.mean_displacement, dtype=dtype,
                                   device=device)
            basis = torch.as_tensor(self.basis, dtype=dtype, device=device)
            self._torch_cache[key] = (base, basis)
        return self._torch_cache[key]

    def deform(self, z: torch.Tensor) -> torch.Tensor:
        """Return the deformed canonical vertices (..., V, 3) for codes z (..., k).

        vertices(z) = V_c + D0 + sum_j z_j D_j: affine, differentiable in z, batched over the
        leading dimensions; dtype and device follow z. Object frame, `units`.
        """
        if z.shape[-1:] != (self.latent_dim,):
            raise ValueError(f"z must have shape (..., {self.latent_dim}), got {tuple(z.shape)}")
        base, basis = self._tensors(z.dtype, z.device)
        return base + torch.einsum("...k,kvc->...vc", z, basis)

    def deform_numpy(self, z) -> np.ndarray:
        """Return the deformed vertices (..., V, 3) float64 for codes z (..., k) (numpy)."""
        z = np.asarray(z, dtype=np.float64)
        if z.shape[-1:] != (self.latent_dim,):
            raise ValueError(f"z must have shape (..., {self.latent_dim}), got {z.shape}")
        return (self.canonical_vertices + self.mean_displacement
                + np.einsum("...k,kvc->...vc", z, self.basis))

    def project(self, displacement) -> np.ndarray:
        """Return the code z (k,) whose displacement D0 + sum_j z_j D_j is closest (least
        squares over all vertex coordinates, units) to `displacement` (V, 3) of the canonical's
        vertices."""
        d = np.asarray(displacement, dtype=np.float64)
        if d.shape != self.canonical_vertices.shape:
            raise ValueError(f"displacement must have shape {self.canonical_vertices.shape}, "
                             f"got {d.shape}")
        a = self.basis.reshape(self.latent_dim, -1).T
        z, *_ = np.linalg.lstsq(a, (d - self.mean_displacement).reshape(-1), rcond=None)
        return z

    # -- 3D baseline ----------------------------------------------------------------------
    def fit_points(self, points, pose=None, optimise_pose: bool = False, z0=None,
                   iterations: int = 50, tolerance: float = 1e-7, symmetric: bool = True,
                   model_points: int = 5000,
                   rng: np.random.Generator | None = None) -> FitResult:
        """Fit a latent code (and optionally a rigid pose) to observed points; the 3D baseline.

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
        z = (self.canonical_code if z0 is None else np.asarray(z0, np.float64)).copy()
        base, basis = self._surface_samples(model_points, rng or np.random.default_rng(0))
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
        *_, loss, d1 = correspondences(model(z) @ rot.T + trans)
        return FitResult(z=z, rotation=rot, translation=trans, loss=loss,
                         mean_distance=float(d1.mean()), iterations=it)

    def _surface_samples(self, count: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return (base (S, 3), basis (k, S, 3)): the affine map z -> surface points of the
        deformed mesh at the vertices plus `count` fixed barycentric points on the faces."""
        v0 = self.canonical_vertices
        tri = v0[self.faces]
        area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]),
                                    axis=1)
        face = rng.choice(len(self.faces), size=count, p=area / area.sum())
        u, v = rng.random(count), rng.random(count)
        flip = u + v > 1.0
        u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
        bary = np.stack([1.0 - u - v, u, v], 1)  # (S, 3)
        fv = self.faces[face]  # (S, 3) vertex ids
        vb = self.canonical_vertices + self.mean_displacement
        base = np.concatenate([vb, np.einsum("sj,sjc->sc", bary, vb[fv])])
        basis = np.concatenate([self.basis, np.einsum("sj,ksjc->ksc", bary, self.basis[:, fv])],
                               axis=1)
        return base, basis

    # -- persistence ------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Return the non-array fields as a JSON-ready dict."""
        return {"format": FORMAT, "version": self.version, "category": self.category,
                "units": self.units, "basis_kind": self.basis_kind,
                "latent_dim": self.latent_dim, "num_vertices": self.num_vertices,
                "num_faces": int(len(self.faces)),
                "template_points": int(len(self.template_points)),
                "train_names": list(self.train_names), "cpd_params": self.cpd_params,
                "input_hashes": self.input_hashes}

    def save(self, path: Path, report: dict[str, Any] | None = None) -> Path:
        """Write `path` (.npz: arrays + metadata) and its `.json` sidecar (metadata, and
        `report` if given) atomically; return the .npz path."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        meta = self.metadata()
        arrays = {name: np.asarray(getattr(self, name)) for name in _ARRAYS}
        arrays["format"] = np.array(FORMAT)
        arrays["version"] = np.array(self.version, dtype=np.int64)
        arrays["metadata"] = np.array(json.dumps(meta))

        def writer(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                # numpy's stub types **kwds as if they could bind allow_pickle: bool
                np.savez(fh, **arrays)  # type: ignore[arg-type]

        write_atomic(path, writer)
        sidecar = dict(meta)
        sidecar["explained_variance"] = self.explained_variance.tolist()
        sidecar["explained_variance_ratio"] = self.explained_variance_ratio.tolist()
        sidecar["train_codes"] = {n: c.tolist() for n, c in zip(self.train_names,
                                                                self.train_codes)}
        sidecar["canonical_code"] = self.canonical_code.tolist()
        if report is not None:
            sidecar["report"] = report
        write_json_atomic(path.with_suffix(".json"), sidecar)
        return path

    @classmethod
    def load(cls, path: Path) -> "ShapeSpace":
        """Return the shape space saved at `path` (.npz); ArtifactError if it is missing,
        corrupted, not a regtool shape space, of another version or inconsistent."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"shape space file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                files = set(data.files)
                if "format" not in files or str(data["format"]) != FORMAT:
                    raise ArtifactError(f"{path} is not a regtool shape space "
                                        f"(no '{FORMAT}' format tag)")
                missing = [k for k in (*_ARRAYS, "version", "metadata") if k not in files]
                if missing:
                    raise ArtifactError(f"shape space {path} is incomplete "
                                        f"(missing: {', '.join(missing)})")
                version = int(data["version"])
                if version != VERSION:
                    raise ArtifactError(f"shape space {path} has version {version}; this regtool "
                                        f"reads version {VERSION}")
                arrays = {k: np.array(data[k]) for k in _ARRAYS}
                meta = json.loads(str(data["metadata"]))
        except ArtifactError:
            raise
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
                json.JSONDecodeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ArtifactError(f"shape space {path} is corrupted or unreadable: {msg}") from exc
        try:
            typed: dict[str, Any] = {
                k: (v.astype(np.int64) if k == "faces" else v.astype(np.float64))
                for k, v in arrays.items()}
            space = cls(category=str(meta["category"]), units=str(meta["units"]),
                        train_names=tuple(str(n) for n in meta["train_names"]),
                        basis_kind=str(meta["basis_kind"]), cpd_params=dict(meta["cpd_params"]),
                        input_hashes=dict(meta["input_hashes"]), version=version, **typed)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"shape space {path} has malformed metadata: {exc}") from exc
        problem = space.consistency_problem()
        if problem:
            raise ArtifactError(f"shape space {path} is inconsistent: {problem}")
        return space

    def consistency_problem(self) -> str | None:
        """Return a description of the first shape mismatch or non-finite array, else None."""
        v, k = self.canonical_vertices.shape[0], self.basis.shape[0] if self.basis.ndim else -1
        n = len(self.train_names)
        expect = {"canonical_vertices": (v, 3), "mean_displacement": (v, 3), "basis": (k, v, 3),
                  "explained_variance": (k,), "explained_variance_ratio": (k,),
                  "train_codes": (n, k), "canonical_code": (k,)}
        if self.canonical_vertices.ndim != 2 or self.canonical_vertices.shape[1:] != (3,):
            return f"canonical_vertices has shape {self.canonical_vertices.shape}"
        for name, shape in expect.items():
            if getattr(self, name).shape != shape:
                return f"{name} has shape {getattr(self, name).shape}, expected {shape}"
        if self.template_points.ndim != 2 or self.template_points.shape[1] != 3:
            return f"template_points has shape {self.template_points.shape}"
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            return f"faces has shape {self.faces.shape}"
        if self.faces.min() < 0 or self.faces.max() >= v:
            return "face indices out of range"
        if self.pca_components.ndim != 2 or self.pca_components.shape[0] != k \
                or self.pca_mean.shape != self.pca_components.shape[1:]:
            return "pca_mean / pca_components shapes do not match"
        for name in _ARRAYS:
            if name != "faces" and not np.isfinite(getattr(self, name)).all():
                return f"{name} contains NaN or infinite values"
        return None


def pca_shape_space(*, category: str, units: str, canonical_vertices: np.ndarray,
                    faces: np.ndarray, template_points: np.ndarray,
                    displacements: np.ndarray, weights: np.ndarray | None,
                    kernel_at_vertices: np.ndarray | None, train_names: list[str],
                    latent_dim: int, basis_kind: str = "displacement",
                    cpd_params: dict | None = None,
                    input_hashes: dict | None = None) -> ShapeSpace:
    """Return the ShapeSpace from the CPD results of n >= 2 training instances.

    displacements (n, V, 3): d_i = G(Y, V_c) W_i, units. weights (n, M, 3) and
    kernel_at_vertices (V, M) = G(V_c, Y) are needed only for basis_kind 'weights' (PCA over
    W_i, mapped to vertex displacements through G). latent_dim is clamped to n - 1. PCA by
    scikit-learn (full SVD, deterministic).
    """
    from sklearn.decomposition import PCA

    n = len(displacements)
    if n < 2:
        raise MeshError(f"a shape space needs at least 2 training instances, got {n}")
    k = max(1, min(int(latent_dim), n - 1))
    v = canonical_vertices.shape[0]
    if basis_kind == "displacement":
        data = displacements.reshape(n, -1)
    elif basis_kind == "weights":
        if weights is None or kernel_at_vertices is None:
            raise ValueError("basis kind 'weights' needs weights and kernel_at_vertices")
        data = weights.reshape(n, -1)
    else:
        raise ValueError(f"unknown basis kind {basis_kind!r}")
    pca = PCA(n_components=k, svd_solver="full").fit(data)
    codes = pca.transform(data)
    if basis_kind == "displacement":
        d0 = pca.mean_.reshape(v, 3)
        basis = pca.components_.reshape(k, v, 3)
    else:
        assert weights is not None and kernel_at_vertices is not None  # checked above
        m = weights.shape[1]
        d0 = kernel_at_vertices @ pca.mean_.reshape(m, 3)
        basis = np.einsum("vm,kmc->kvc", kernel_at_vertices, pca.components_.reshape(k, m, 3))
    space = ShapeSpace(category=category, units=units,
                       canonical_vertices=np.asarray(canonical_vertices, np.float64),
                       faces=np.asarray(faces, np.int64),
                       template_points=np.asarray(template_points, np.float64),
                       mean_displacement=d0, basis=basis,
                       explained_variance=pca.explained_variance_.astype(np.float64),
                       explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
                       train_codes=codes.astype(np.float64), train_names=tuple(train_names),
                       canonical_code=np.zeros(k), pca_mean=pca.mean_.astype(np.float64),
                       pca_components=pca.components_.astype(np.float64), basis_kind=basis_kind,
                       cpd_params=dict(cpd_params or {}), input_hashes=dict(input_hashes or {}))
    space.canonical_code = space.project(np.zeros((v, 3)))
    return space


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
