"""Loading a category of a verified dataset into memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from regtool.data.manifest import Manifest, Mirror, Symmetry, verify_dataset
from regtool.errors import DatasetError
from regtool.geometry.mesh import load_mesh, load_points


@dataclass(frozen=True)
class TestInstance:
    name: str
    mesh: trimesh.Trimesh
    eval_points: np.ndarray  # (N, 3) in the dataset's units


@dataclass(frozen=True)
class CategoryData:
    """A category's meshes in the dataset's units (`units`, e.g. 'm'); `hashes` maps relative
    paths to sha256 of the files actually read; `symmetry` the manifest's rotational symmetry
    axis and `mirror` its mirror plane of the category (object frame, `units`), if it declares
    them."""

    name: str
    units: str
    canonical: trimesh.Trimesh
    train: dict[str, trimesh.Trimesh]
    test: tuple[TestInstance, ...]
    hashes: dict[str, str]
    paths: dict[str, str] = field(default_factory=dict)  # mesh name -> path in the dataset
    symmetry: Symmetry | None = None
    mirror: Mirror | None = None


def load_category(root: Path, category: str, with_test: bool = True,
                  min_train: int = 2) -> CategoryData:
    """Return the meshes of `category` from the dataset at `root`, verified against its manifest;
    DatasetError if the category is absent or has fewer than `min_train` training meshes."""
    from regtool.io import sha256_file

    root = Path(root)
    manifest = _verify_one(root, category)
    c = manifest.category(category)
    if len(c.train) < min_train:
        raise DatasetError(f"category '{category}' has {len(c.train)} training meshes; "
                           f"at least {min_train} are needed")
    hashes, paths = {}, {}

    def mesh(entry):
        m = load_mesh(root / entry.path)
        hashes[entry.path] = sha256_file(root / entry.path)
        paths[entry.name] = entry.path
        return m

    tests: tuple[TestInstance, ...] = ()
    if with_test:
        tests = tuple(TestInstance(t.mesh.name, mesh(t.mesh),
                                   load_points(root / t.eval_points.path)) for t in c.test)
    return CategoryData(category, manifest.units, mesh(c.canonical),
                        {e.name: mesh(e) for e in c.train}, tests, hashes, paths, c.symmetry,
                        c.mirror)


def _verify_one(root: Path, category: str) -> Manifest:
    """Return the manifest after checking that `category` exists and its files match."""
    from regtool.data.manifest import read_manifest

    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    manifest = read_manifest(root)
    manifest.category(category)
    return verify_dataset(root, categories=[category])


# Size and frame checks (check-dataset, build-shapespace, import-dataset).
SIZE_WARN_RATIO = 3.0  # a mesh this many times larger or smaller than the canonical: warning
SIZE_ERROR_RATIO = 10.0  # build-shapespace refuses such a training mesh (a units mix-up)
CENTRE_WARN_FRACTION = 0.25  # canonical bbox centre further from the origin than this x size


def mesh_size(vertices: np.ndarray) -> float:
    """Return the size of a mesh or point set: its bounding-box diagonal (its units)."""
    v = np.asarray(vertices, np.float64)
    return float(np.linalg.norm(v.max(axis=0) - v.min(axis=0)))


def size_ratio(size: float, reference: float) -> float:
    """Return how many times `size` and `reference` differ (>= 1; inf if one is 0)."""
    small, large = sorted((size, reference))
    return large / small if small > 0 else float("inf")


def size_message(label: str, size: float, canonical_size: float, units: str) -> str:
    """Return the line that names a mesh whose size differs from the canonical's."""
    return (f"{label}: size {size:.4g} {units} is {size_ratio(size, canonical_size):.1f}x "
            f"the canonical's ({canonical_size:.4g} {units}; size = bounding-box diagonal): "
            f"a different unit?")


def centre_message(label: str, vertices: np.ndarray, units: str) -> str | None:
    """Return a warning when the bounding-box centre of `vertices` is further from the origin
    than CENTRE_WARN_FRACTION x its size (views are rendered around the origin), else None."""
    v = np.asarray(vertices, np.float64)
    centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
    size = mesh_size(v)
    if np.linalg.norm(centre) <= CENTRE_WARN_FRACTION * size:
        return None
    return (f"{label}: the canonical's bounding-box centre {np.round(centre, 4).tolist()} {units} "
            f"is {np.linalg.norm(centre):.4g} {units} from the origin (more than "
            f"{CENTRE_WARN_FRACTION:g} x its size {size:.4g}); rendered views will cut it off "
            f"(regtool import-dataset recentres)")


def content_findings(root: Path, manifest: Manifest,
                     categories: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Return (problems, warnings) from loading every mesh and point file of the dataset at
    `root`: problems for files that do not load or hold no, non-finite or out-of-range data
    (whatever their hash says), warnings for a canonical far from the origin and for meshes
    whose size differs from their canonical's by more than SIZE_WARN_RATIO. Missing files are
    left to `verification_problems`."""
    from regtool.errors import MeshError

    root = Path(root)
    problems: list[str] = []
    warnings: list[str] = []
    for cname in categories if categories is not None else list(manifest.categories):
        c = manifest.categories.get(cname)
        if c is None:
            continue
        sizes: dict[str, float] = {}
        entries = [c.canonical, *c.train, *(t.mesh for t in c.test)]
        for e in entries:
            if not (root / e.path).is_file():
                continue
            try:
                mesh = load_mesh(root / e.path)
            except MeshError as exc:
                problems.append(f"{cname}: {exc}")
                continue
            sizes[e.path] = mesh_size(mesh.vertices)
            if e is c.canonical:
                message = centre_message(f"{cname}: {e.path}", mesh.vertices, manifest.units)
                if message:
                    warnings.append(message)
        for t in c.test:
            if (root / t.eval_points.path).is_file():
                try:
                    load_points(root / t.eval_points.path)
                except MeshError as exc:
                    problems.append(f"{cname}: {exc}")
        canonical_size = sizes.get(c.canonical.path)
        if canonical_size is None:
            continue
        for path, size in sizes.items():
            if path != c.canonical.path and size_ratio(size, canonical_size) > SIZE_WARN_RATIO:
                warnings.append(size_message(f"{cname}: {path}", size, canonical_size,
                                             manifest.units))
    return problems, warnings
