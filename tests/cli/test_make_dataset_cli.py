"""`regtool make-dataset` / `check-dataset` and the global CLI behaviour through CliRunner."""

from __future__ import annotations

import json
import os

import pytest
from clitools import one_line_error
from datatools import copy_category
from typer.testing import CliRunner

from regtool import __version__
from regtool.cli import app

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("make-dataset", "check-dataset", "--device", "--seed"):
        assert name in result.output


def test_cuda_without_gpu_is_one_line_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = runner.invoke(app, ["--device", "cuda", "make-dataset", "--out", str(tmp_path / "x")])
    one_line_error(result, "CUDA")
    assert not (tmp_path / "x").exists()


def test_make_dataset_writes_a_verifiable_dataset(tmp_path):
    out = tmp_path / "ds"
    result = runner.invoke(app, ["--seed", "5", "make-dataset", "--out", str(out),
                                 "--categories", "bottle", "--n-train", "3", "--n-test", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["categories"]) == ["bottle"]
    assert len(manifest["categories"]["bottle"]["train"]) == 3
    assert (out / "bottle" / "contact_sheet.png").is_file()
    result = runner.invoke(app, ["check-dataset", str(out)])
    assert result.exit_code == 0 and "matches its manifest" in result.output


def test_unknown_category_writes_nothing(tmp_path):
    result = runner.invoke(app, ["make-dataset", "--out", str(tmp_path / "ds"),
                                 "--categories", "bottle,teapot"])
    one_line_error(result, "make_dataset.categories", "teapot")
    assert not (tmp_path / "ds").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_non_root(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    result = runner.invoke(app, ["make-dataset", "--out", str(ro / "ds")])
    one_line_error(result, "not writable")


def test_output_under_a_file_is_one_line_error(tmp_path):
    # Works as root too: a path below a regular file can never be created.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["make-dataset", "--out", str(blocker / "ds"),
                                 "--categories", "spray"])
    one_line_error(result, "cannot create output folder", "is not a folder")


def test_malformed_config_is_one_line_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[make_dataset]\nn_train = -4\n")
    result = runner.invoke(app, ["make-dataset", "--out", str(tmp_path / "ds"),
                                 "--config", str(cfg)])
    one_line_error(result, "make_dataset.n_train")
    assert not (tmp_path / "ds").exists()
    cfg.write_text("[make_dataset\n")
    result = runner.invoke(app, ["make-dataset", "--out", str(tmp_path / "ds"),
                                 "--config", str(cfg)])
    one_line_error(result, "not valid TOML")


def test_failure_midway_leaves_previous_output_intact(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")

    import regtool.data.generate as generate
    from regtool.errors import MeshError

    calls = {"n": 0}
    real = generate.generate_mesh

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MeshError("simulated meshing failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "generate_mesh", flaky)
    # keep.txt is not regtool's: only --overwrite lets make-dataset replace this folder.
    result = runner.invoke(app, ["make-dataset", "--out", str(out), "--categories", "bottle",
                                 "--overwrite"])
    one_line_error(result, "simulated meshing failure")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]


def test_check_dataset_reports_mismatch(dataset_dir, tmp_path):
    root = copy_category(dataset_dir, tmp_path / "ds", "spray")
    (root / "spray" / "train" / "spray_train_00.ply").write_bytes(b"ply\nbroken")
    result = runner.invoke(app, ["check-dataset", str(root)])
    one_line_error(result, "sha256 mismatch for spray/train/spray_train_00.ply")
