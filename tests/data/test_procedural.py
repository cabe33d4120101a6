"""The built-in procedural dataset: counts, watertightness, sizes, determinism, manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from regtool.config import MakeDatasetConfig
from regtool.data.dataset import load_category
from regtool.data.generate import make_dataset
from regtool.data.manifest import read_manifest, verify_dataset
from regtool.data.procedural import CATEGORY_SPECS, canonical_params, generate_mesh

CATEGORIES = ("bottle", "camera", "drill", "spray")


def test_four_categories_with_canonical_train_and_test(dataset_dir):
    manifest = verify_dataset(dataset_dir)
    assert set(manifest.categories) == set(CATEGORIES)
    assert manifest.units == "m"
    for c in manifest.categories.values():
        assert len(c.train) >= 10
        assert len(c.test) == 2


@pytest.mark.parametrize("category", CATEGORIES)
def test_meshes_watertight_oriented_and_sized(dataset_dir, category):
    data = load_category(dataset_dir, category)
    meshes = [data.canonical, *data.train.values(), *(t.mesh for t in data.test)]
    for mesh in meshes:
        m = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
        assert m.is_watertight
        assert m.is_winding_consistent
        assert m.volume > 0  # outward normals
        assert 2000 <= len(m.vertices) <= 20000
        extent = m.extents.max()
        assert 0.08 < extent < 0.4  # real-world size in metres
    # Aligned in one category frame: the canonical is centred, instances overlap it.
    assert np.allclose(data.canonical.bounds.mean(axis=0), 0.0, atol=1e-9)
    for mesh in data.train.values():
        assert np.linalg.norm(mesh.bounds.mean(axis=0)) < 0.06


@pytest.mark.parametrize("category", CATEGORIES)
def test_instances_vary(dataset_dir, category):
    data = load_category(dataset_dir, category, with_test=False)
    extents = np.array([m.extents for m in data.train.values()])
    # Proportions vary independently: the relative spread of at least two axes is > 5 %.
    rel = extents.std(axis=0) / extents.mean(axis=0)
    assert (rel > 0.05).sum() >= 2, rel


def test_eval_points_lie_on_the_test_surface(dataset_dir):
    data = load_category(dataset_dir, "drill")
    for t in data.test:
        assert t.eval_points.shape == (2000, 3)
        _, dist, _ = trimesh.proximity.closest_point(t.mesh, t.eval_points[:200])
        assert dist.max() < 1e-4  # 0.1 mm: float32 PLY storage and trimesh closest-point tolerance


def test_same_seed_gives_identical_hashes(dataset_dir, tmp_path):
    # Categories draw from their own seed stream, so generating one again must reproduce it.
    cfg = MakeDatasetConfig(categories=("bottle",), contact_sheet=False)
    make_dataset(tmp_path / "again", cfg, seed=0)
    first = read_manifest(dataset_dir).categories["bottle"]
    second = read_manifest(tmp_path / "again").categories["bottle"]
    assert first == second


def test_other_seed_gives_other_shapes(tmp_path):
    cfg = MakeDatasetConfig(categories=("spray",), n_train=2, n_test=1, contact_sheet=False)
    a = make_dataset(tmp_path / "a", cfg, seed=0).categories["spray"]
    b = make_dataset(tmp_path / "b", cfg, seed=1).categories["spray"]
    assert a.canonical.sha256 == b.canonical.sha256  # the canonical is the parameter midpoint
    assert a.train[0].sha256 != b.train[0].sha256


@pytest.mark.gl
def test_contact_sheet_written(tmp_path):
    import imageio.v3 as iio

    cfg = MakeDatasetConfig(categories=("camera",), n_train=2, n_test=1, contact_sheet_size=64)
    make_dataset(tmp_path / "ds", cfg, seed=3)
    image = iio.imread(tmp_path / "ds" / "camera" / "contact_sheet.png")
    assert image.ndim == 3 and image.shape[0] > 64 and image.shape[1] > 3 * 64
    # Something other than the white background was drawn.
    assert (image[..., :3] < 200).any(axis=-1).mean() > 0.01


def test_generator_params_recorded(dataset_dir):
    params = json.loads((dataset_dir / "bottle" / "params.json").read_text())
    assert params["instances"]["canonical"] == canonical_params("bottle")
    assert len(params["instances"]) == 1 + 10 + 2


def test_every_category_has_the_named_parts():
    # Parts are separate SDF terms: removing a part changes the volume noticeably.
    for name, spec in CATEGORY_SPECS.items():
        mesh = generate_mesh(name, canonical_params(name), 0.004)
        assert mesh.is_watertight, name
        assert len(spec.description.split(",")) >= 2
