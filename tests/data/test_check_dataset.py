"""`regtool check-dataset` loads every file (issue 12.13) and warns about frames and units
(issue 11.1); build-shapespace refuses a training mesh in another unit (issue 12.7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from clitools import one_line_error
from datatools import copy_category
from typer.testing import CliRunner

from regtool.cli import app
from regtool.geometry.mesh import load_mesh
from regtool.io import sha256_file

runner = CliRunner()
TRAIN = "bottle/train/bottle_train_04.ply"
CANONICAL = "bottle/canonical/bottle_canonical.ply"


def _rehash(root: Path) -> None:
    """Update every sha256 of the manifest to the files' current bytes (a consistent dataset
    whose content is bad)."""
    data = json.loads((root / "manifest.json").read_text())
    for c in data["categories"].values():
        for e in [c["canonical"], *c["train"], *c["test"], *(t["eval_points"] for t in c["test"])]:
            e["sha256"] = sha256_file(root / e["path"])
    (root / "manifest.json").write_text(json.dumps(data))


def _transform(root: Path, rel: str, scale: float = 1.0, shift=(0.0, 0.0, 0.0)) -> None:
    mesh = load_mesh(root / rel)
    vertices = np.asarray(mesh.vertices) * scale + np.asarray(shift)
    trimesh.Trimesh(vertices, mesh.faces, process=False).export(root / rel)


@pytest.fixture
def bottle(dataset_dir, tmp_path):
    return copy_category(dataset_dir, tmp_path / "ds", "bottle")


def _check(root: Path, *flags):
    return runner.invoke(app, ["check-dataset", str(root), *flags])


def test_nan_vertices_with_matching_hash_are_reported(bottle):
    mesh = load_mesh(bottle / TRAIN)
    vertices = np.asarray(mesh.vertices).copy()
    vertices[7] = np.nan
    trimesh.Trimesh(vertices, mesh.faces, process=False).export(bottle / TRAIN)
    _rehash(bottle)
    one_line_error(_check(bottle), TRAIN, "NaN")
    fast = _check(bottle, "--fast")  # presence and hashes only: the documented fast path
    assert fast.exit_code == 0 and "hashes match;" in fast.output, fast.output


@pytest.mark.parametrize("content, fragment", [
    ("nan", "NaN or infinite"), ("empty", "expected shape (N>0, 3)")])
def test_bad_point_files_are_reported(bottle, content, fragment):
    rel = "bottle/test/bottle_test_01_points.ply"
    points = np.zeros((0, 3)) if content == "empty" else np.full((10, 3), np.nan)
    (bottle / rel).unlink()
    np.save(bottle / "x.npy", points)
    data = json.loads((bottle / "manifest.json").read_text())
    data["categories"]["bottle"]["test"][1]["eval_points"]["path"] = "x.npy"
    (bottle / "manifest.json").write_text(json.dumps(data))
    _rehash(bottle)
    one_line_error(_check(bottle), "x.npy", fragment)


def test_faces_out_of_range_are_reported(bottle):
    (bottle / TRAIN).write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")
    _rehash(bottle)
    one_line_error(_check(bottle), TRAIN)


def test_good_dataset_has_no_warnings(dataset_dir):
    result = _check(dataset_dir)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert "hashes match, contents valid; units: m)" in result.output


def test_off_centre_canonical_warns(bottle):
    for rel in [CANONICAL, *(p.relative_to(bottle) for p in (bottle / "bottle").rglob("*.ply")
                             if "canonical" not in p.parts and "_points" not in p.name)]:
        _transform(bottle, str(rel), shift=(0.0, 0.0, 0.115))  # origin at the bottle's base
    _rehash(bottle)
    result = _check(bottle)
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and CANONICAL in warnings[0], result.output
    assert "from the origin" in warnings[0]


def test_mesh_in_other_units_warns_naming_the_file(bottle):
    _transform(bottle, TRAIN, scale=1000.0)  # this one in mm under a manifest in m
    _rehash(bottle)
    result = _check(bottle)
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and TRAIN in warnings[0] and _ratio(bottle) in warnings[0], warnings
    assert "1 warnings" in result.output


def _ratio(root: Path) -> str:
    """Return how many times TRAIN's size exceeds the canonical's, as the messages print it."""
    from regtool.data.dataset import mesh_size

    sizes = [mesh_size(load_mesh(root / rel).vertices) for rel in (TRAIN, CANONICAL)]
    return f"{sizes[0] / sizes[1]:.1f}x"


def _small_config(tmp_path: Path) -> str:
    path = tmp_path / "small.toml"
    path.write_text("[shapespace]\ntemplate_points = 200\ntarget_points = 200\n"
                    "report_points = 200\nmax_iterations = 10\n")
    return str(path)


def test_build_shapespace_refuses_a_mesh_ten_times_too_large(bottle, tmp_path):
    _transform(bottle, TRAIN, scale=1000.0)
    _rehash(bottle)
    out = tmp_path / "ss.npz"
    result = runner.invoke(app, ["build-shapespace", "--dataset", str(bottle), "--category",
                                 "bottle", "--out", str(out), "--config", _small_config(tmp_path)])
    one_line_error(result, TRAIN, _ratio(bottle), "refused")
    assert not out.exists()


def test_build_shapespace_warns_above_three_times(bottle, tmp_path):
    _transform(bottle, TRAIN, scale=4.0)  # 4.7x the canonical's size
    _rehash(bottle)
    out = tmp_path / "ss.npz"
    result = runner.invoke(app, ["build-shapespace", "--dataset", str(bottle), "--category",
                                 "bottle", "--out", str(out), "--config", _small_config(tmp_path)])
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and TRAIN in warnings[0] and _ratio(bottle) in warnings[0], (
        result.output)
    report = json.loads(out.with_suffix(".json").read_text())["report"]
    assert len(report["warnings"]) == 1 and TRAIN in report["warnings"][0]
