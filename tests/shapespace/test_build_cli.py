"""`regtool build-shapespace` / `inspect-shapespace` through CliRunner: artifacts and report on
the built-in dataset, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app
from regtool.io import sha256_file

runner = CliRunner()

TINY = """[shapespace]
template_points = 600
target_points = 600
max_iterations = 60
report_points = 600
"""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.mark.parametrize("category", ["bottle", "camera", "drill", "spray"])
def test_build_shapespace_on_the_builtin_dataset(dataset_dir, tiny_config, tmp_path, category):
    out = tmp_path / "ss.npz"
    result = runner.invoke(app, ["build-shapespace", "--dataset", str(dataset_dir), "--category",
                                 category, "--out", str(out), "--config", str(tiny_config)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())["report"]
    assert report["units"] == "m" and report["latent_dim"] == 5 and report["n_train"] == 10
    assert len(report["explained_variance"]) == 5 and len(report["instances"]) == 10
    for key in ("cpd_residual", "latent_error", "canonical_error", "cpd_iterations"):
        assert all(np.isfinite(r[key]) for r in report["instances"])
    assert set(report["timings"]) >= {"cpd_s", "pca_s", "load_s", "total_s"}
    assert len(report["input_hashes"]) == 11
    s = report["summary"]
    assert s["mean_latent_error"] <= 0.5 * s["mean_canonical_error"], s
    result = runner.invoke(app, ["inspect-shapespace", str(out)])
    assert result.exit_code == 0 and category in result.output
    # The manifest's symmetries travel with the space and are shown.
    assert ("axis (0, 0, 1)" in result.output) == (category in ("bottle", "spray")), result.output
    assert ("mirror plane with normal (0, 1, 0)" in result.output) == (
        category in ("drill", "spray")), result.output
    assert ("none declared" in result.output) == (category == "camera"), result.output


def _copy(dataset_dir, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root)
    return root


def _replace_train_mesh(root, text_or_bytes):
    """Overwrite bottle's first training mesh and re-pin its hash in the manifest."""
    mpath = root / "manifest.json"
    manifest = json.loads(mpath.read_text())
    entry = manifest["categories"]["bottle"]["train"][0]
    f = root / entry["path"]
    f.write_text(text_or_bytes) if isinstance(text_or_bytes, str) else f.write_bytes(text_or_bytes)
    entry["sha256"] = sha256_file(f)
    mpath.write_text(json.dumps(manifest))
    return entry["name"]


def _ply(vertices, faces):
    head = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x",
            "property float y", "property float z", f"element face {len(faces)}",
            "property list uchar int vertex_indices", "end_header"]
    body = [" ".join(str(c) for c in v) for v in vertices]
    body += ["3 " + " ".join(str(i) for i in f) for f in faces]
    return "\n".join(head + body) + "\n"


def build(root, tmp_path, category="bottle"):
    return runner.invoke(app, ["build-shapespace", "--dataset", str(root), "--category", category,
                               "--out", str(tmp_path / "out" / "ss.npz")])


def test_unknown_category(dataset_dir, tmp_path):
    one_line_error(build(dataset_dir, tmp_path, "teapot"), "teapot", "available")
    assert not (tmp_path / "out").exists()


def test_missing_dataset(tmp_path):
    one_line_error(build(tmp_path / "nope", tmp_path), "not found")


def test_fewer_than_two_training_meshes(dataset_dir, tmp_path):
    root = _copy(dataset_dir, tmp_path)
    mpath = root / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["categories"]["bottle"]["train"] = manifest["categories"]["bottle"]["train"][:1]
    mpath.write_text(json.dumps(manifest))
    one_line_error(build(root, tmp_path), "at least 2")


@pytest.mark.parametrize("kind", ["degenerate", "empty", "nan"])
def test_bad_training_mesh(dataset_dir, tmp_path, kind):
    root = _copy(dataset_dir, tmp_path)
    if kind == "degenerate":  # all vertices on a line
        text = _ply([(0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0)], [(0, 1, 2), (1, 2, 3)])
        fragment = "degenerate"
    elif kind == "empty":
        text = _ply([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [])
        fragment = "no triangles"
    else:
        text = _ply([(0, 0, 0), (1, 0, 0), (0, 1, 0), ("nan", 0, 1)], [(0, 1, 2), (1, 2, 3)])
        fragment = "NaN"
    name = _replace_train_mesh(root, text)
    result = build(root, tmp_path)
    one_line_error(result, fragment, name)
    assert not (tmp_path / "out" / "ss.npz").exists()


def test_corrupted_and_foreign_artifacts(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00garbage" * 10)
    one_line_error(runner.invoke(app, ["inspect-shapespace", str(junk)]), "corrupted")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros((3, 3)))
    one_line_error(runner.invoke(app, ["inspect-shapespace", str(foreign)]),
                   "not a regtool shape space")
    one_line_error(runner.invoke(app, ["inspect-shapespace", str(tmp_path / "none.npz")]),
                   "not found")
