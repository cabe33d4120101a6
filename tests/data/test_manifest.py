"""Manifest parsing and dataset verification: precise messages for what is missing or wrong."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from datatools import copy_category
from scipy.spatial import cKDTree

from regtool.data.manifest import parse_manifest, read_manifest, verify_dataset
from regtool.errors import DatasetError


@pytest.fixture()
def small_copy(dataset_dir, tmp_path):
    """A copy of the bottle category of the built-in dataset."""
    return copy_category(dataset_dir, tmp_path / "ds", "bottle")


def test_valid_copy_verifies(small_copy):
    assert list(verify_dataset(small_copy).categories) == ["bottle"]


def test_missing_file_is_named(small_copy):
    (small_copy / "bottle" / "train" / "bottle_train_03.ply").unlink()
    with pytest.raises(DatasetError, match="missing file bottle/train/bottle_train_03.ply"):
        verify_dataset(small_copy)


def test_changed_file_is_a_hash_mismatch(small_copy):
    path = small_copy / "bottle" / "test" / "bottle_test_01_points.ply"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DatasetError, match="sha256 mismatch for bottle/test/bottle_test_01"):
        verify_dataset(small_copy)
    verify_dataset(small_copy, check_hashes=False)


def test_missing_manifest(tmp_path):
    with pytest.raises(DatasetError, match="dataset manifest file not found"):
        verify_dataset(tmp_path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(format="other"), "not a regtool dataset manifest"),
    (lambda d: d.update(units="furlong"), "units must be one of"),
    (lambda d: d["categories"]["bottle"].pop("canonical"), "canonical must be an object"),
    (lambda d: d["categories"]["bottle"]["train"][0].update(path="/etc/passwd"),
     "must be relative"),
    (lambda d: d["categories"]["bottle"]["train"][0].update(sha256="abc"), "64 hex digits"),
    (lambda d: d["categories"]["bottle"]["test"][0].pop("eval_points"), "eval_points missing"),
])
def test_malformed_manifest_names_the_field(small_copy, mutate, message):
    data = json.loads((small_copy / "manifest.json").read_text())
    mutate(data)
    with pytest.raises(DatasetError, match=message):
        parse_manifest(data)


def test_deepcpd_template_parses(repo_root):
    manifest = read_manifest(repo_root / "data_manifests" / "deepcpd.json")
    assert set(manifest.categories) == {"bottle", "camera", "drill", "spray"}
    for c in manifest.categories.values():
        assert len(c.test) == 2 and len(c.train) >= 2
        assert c.canonical.sha256 is None  # a template: files are not pinned


def test_deepcpd_template_accepts_arranged_data(repo_root, dataset_dir, tmp_path):
    # Arrange built-in meshes the way the template asks a DeepCPD user to; it then verifies.
    manifest = read_manifest(repo_root / "data_manifests" / "deepcpd.json")
    src = read_manifest(dataset_dir)
    for name, c in manifest.categories.items():
        s = src.categories[name]
        pairs = [(c.canonical, s.canonical)] + list(zip(c.train, s.train)) + \
            [(t.mesh, u.mesh) for t, u in zip(c.test, s.test)] + \
            [(t.eval_points, u.eval_points) for t, u in zip(c.test, s.test)]
        for dst, from_ in pairs:
            (tmp_path / dst.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(dataset_dir / from_.path, tmp_path / dst.path)
    verify_dataset(tmp_path, repo_root / "data_manifests" / "deepcpd.json")


def test_procedural_symmetric_categories_declare_their_axis(dataset_dir):
    """make-dataset writes the bottle's and the spray's symmetry axis (z, through the
    generator's origin moved by the category offset); camera and drill have none."""
    manifest = read_manifest(dataset_dir)
    params = json.loads((dataset_dir / "spray" / "params.json").read_text())
    for name in ("bottle", "spray"):
        sym = manifest.category(name).symmetry
        assert sym is not None and sym.axis == (0.0, 0.0, 1.0)
    assert manifest.category("spray").symmetry.point == pytest.approx(params["offset"])
    assert manifest.category("camera").symmetry is None
    assert manifest.category("drill").symmetry is None
    raw = json.loads((dataset_dir / "manifest.json").read_text())
    assert "symmetry" in raw["categories"]["bottle"]
    assert "symmetry" not in raw["categories"]["drill"]


def test_procedural_mirror_symmetric_categories_declare_their_plane(dataset_dir):
    """make-dataset writes the drill's and the spray's mirror plane (y = 0 of the generator,
    moved by the category offset); the camera (grip on one side) and the bottle have none. The
    canonical mesh is its own mirror image about it."""
    from regtool.geometry.mesh import load_mesh

    manifest = read_manifest(dataset_dir)
    for name in ("drill", "spray"):
        plane = manifest.category(name).mirror
        params = json.loads((dataset_dir / name / "params.json").read_text())
        assert plane is not None and plane.normal == (0.0, 1.0, 0.0)
        assert plane.point == pytest.approx(params["offset"])
        vertices = np.asarray(load_mesh(dataset_dir / manifest.category(name).canonical.path)
                              .vertices)
        image = vertices.copy()
        image[:, 1] = 2 * plane.point[1] - image[:, 1]
        gaps = cKDTree(vertices).query(image)[0]
        assert np.percentile(gaps, 99) < 2e-3, np.percentile(gaps, 99)  # a voxel (2 mm)
    assert manifest.category("camera").mirror is None
    assert manifest.category("bottle").mirror is None
    raw = json.loads((dataset_dir / "manifest.json").read_text())
    assert "mirror" in raw["categories"]["drill"] and "mirror" not in raw["categories"]["camera"]


@pytest.mark.parametrize("value, message", [
    ({"axis": [0, 0, 0]}, "axis must be a non-zero"),
    ({"axis": [0, 1]}, "axis must be a list of 3"),
    ({"axis": [0, 0, 1], "point": "x"}, "point must be a list of 3"),
    ({"axis": [0, 0, 1], "spin": 1}, "must be an object with 'axis'"),
])
def test_malformed_symmetry_is_named(small_copy, value, message):
    path = small_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["categories"]["bottle"]["symmetry"] = value
    with pytest.raises(DatasetError, match=message):
        parse_manifest(data)


@pytest.mark.parametrize("value, message", [
    ({"normal": [0, 0, 0]}, "normal must be a non-zero"),
    ({"normal": [0, 1]}, "normal must be a list of 3"),
    ({"axis": [0, 1, 0]}, "must be an object with 'normal'"),
    ([0, 1, 0], "must be an object with 'normal'"),
])
def test_malformed_mirror_is_named(small_copy, value, message):
    data = json.loads((small_copy / "manifest.json").read_text())
    data["categories"]["bottle"]["mirror"] = value
    with pytest.raises(DatasetError, match=r"categories\.bottle\.mirror"):
        parse_manifest(data)
    with pytest.raises(DatasetError, match=message):
        parse_manifest(data)


def test_user_mirror_is_normalised_and_round_trips(small_copy):
    from regtool.data.manifest import manifest_to_dict

    data = json.loads((small_copy / "manifest.json").read_text())
    data["categories"]["bottle"]["mirror"] = {"normal": [3, 0, 0], "point": [0.01, 0, 0]}
    manifest = parse_manifest(data)
    plane = manifest.category("bottle").mirror
    assert plane.normal == (1.0, 0.0, 0.0) and plane.point == (0.01, 0.0, 0.0)
    assert "mirror" not in manifest.category("bottle").extra
    assert parse_manifest(manifest_to_dict(manifest)).category("bottle").mirror == plane


def test_user_symmetry_is_normalised_and_round_trips(small_copy):
    from regtool.data.manifest import manifest_to_dict

    data = json.loads((small_copy / "manifest.json").read_text())
    data["categories"]["bottle"]["symmetry"] = {"axis": [0, 2, 0]}
    manifest = parse_manifest(data)
    sym = manifest.category("bottle").symmetry
    assert sym.axis == (0.0, 1.0, 0.0) and sym.point == (0.0, 0.0, 0.0)
    again = parse_manifest(manifest_to_dict(manifest))
    assert again.category("bottle").symmetry == sym
