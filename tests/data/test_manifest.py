"""Manifest parsing and dataset verification: precise messages for what is missing or wrong."""

from __future__ import annotations

import json
import shutil

import pytest
from datatools import copy_category

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
