"""Loading a category of a verified dataset into memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from regtool.data.manifest import Manifest, verify_dataset
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
    paths to sha256 of the files actually read."""

    name: str
    units: str
    canonical: trimesh.Trimesh
    train: dict[str, trimesh.Trimesh]
    test: tuple[TestInstance, ...]
    hashes: dict[str, str]


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
    hashes = {}

    def mesh(entry):
        m = load_mesh(root / entry.path)
        hashes[entry.path] = sha256_file(root / entry.path)
        return m

    tests = ()
    if with_test:
        tests = tuple(TestInstance(t.mesh.name, mesh(t.mesh),
                                   load_points(root / t.eval_points.path)) for t in c.test)
    return CategoryData(category, manifest.units, mesh(c.canonical),
                        {e.name: mesh(e) for e in c.train}, tests, hashes)


def _verify_one(root: Path, category: str) -> Manifest:
    """Return the manifest after checking that `category` exists and its files match."""
    from regtool.data.manifest import read_manifest

    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    manifest = read_manifest(root)
    manifest.category(category)
    return verify_dataset(root, categories=[category])
