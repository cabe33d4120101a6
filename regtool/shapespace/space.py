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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtool.data.manifest import Mirror, Symmetry, parse_mirror, parse_symmetry
from regtool.errors import ArtifactError, DatasetError, MeshError
from regtool.io import write_atomic, write_json_atomic

FORMAT = "regtool-shapespace"
VERSION = 1
_ARRAYS = ("canonical_vertices", "faces", "template_points", "mean_displacement", "basis",
           "explained_variance", "explained_variance_ratio", "train_codes", "canonical_code",
           "pca_mean", "pca_components")


@dataclass(eq=False, frozen=True)
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
    symmetry: Symmetry | None = None
    mirror: Mirror | None = None
    version: int = VERSION
    # Torch copies of the affine map per (dtype, device); the arrays are read-only copies, so
    # the cache cannot go stale.
    _torch_cache: dict = field(default_factory=dict, repr=False, init=False, compare=False)

    def __post_init__(self) -> None:
        for name in _ARRAYS:
            array = np.array(getattr(self, name))
            array.setflags(write=False)
            object.__setattr__(self, name, array)

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
            base = torch.tensor(self.canonical_vertices + self.mean_displacement, dtype=dtype,
                                   device=device)
            basis = torch.tensor(self.basis, dtype=dtype, device=device)
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

    # -- persistence ------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """Return the non-array fields as a JSON-ready dict."""
        return {"format": FORMAT, "version": self.version, "category": self.category,
                "units": self.units, "basis_kind": self.basis_kind,
                "latent_dim": self.latent_dim, "num_vertices": self.num_vertices,
                "num_faces": int(len(self.faces)),
                "template_points": int(len(self.template_points)),
                "train_names": list(self.train_names), "cpd_params": self.cpd_params,
                "input_hashes": self.input_hashes,
                "symmetry": None if self.symmetry is None else self.symmetry.to_dict(),
                "mirror": None if self.mirror is None else self.mirror.to_dict()}

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
                        input_hashes=dict(meta["input_hashes"]), version=version,
                        symmetry=_saved(parse_symmetry, meta, "symmetry", path),
                        mirror=_saved(parse_mirror, meta, "mirror", path), **typed)
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
                    input_hashes: dict | None = None,
                    symmetry: Symmetry | None = None,
                    mirror: Mirror | None = None) -> ShapeSpace:
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
                       cpd_params=dict(cpd_params or {}), input_hashes=dict(input_hashes or {}),
                       symmetry=symmetry, mirror=mirror)
    return replace(space, canonical_code=space.project(np.zeros((v, 3))))


def _saved(parse, meta: dict, key: str, path: Path):
    """Return the saved symmetry axis or mirror plane `meta[key]` read by `parse` (None in files
    written before it was kept); ArtifactError if it is malformed."""
    try:
        return parse(meta.get(key), key)
    except DatasetError as exc:
        raise ArtifactError(f"shape space {path} has malformed metadata: {exc}") from exc
