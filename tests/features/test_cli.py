"""`regtool train-unet` bad input: one red line, exit code 2, nothing trained."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app

runner = CliRunner()


def train(*args):
    return runner.invoke(app, ["train-unet", *map(str, args)])


def test_missing_dataset(tmp_path):
    one_line_error(train("--dataset", tmp_path / "nope", "--category", "bottle",
                         "--out", tmp_path / "u.pt"), "dataset folder not found")


def test_unknown_category(dataset_dir, tmp_path):
    one_line_error(train("--dataset", dataset_dir, "--category", "teapot",
                         "--out", tmp_path / "u.pt"), "teapot")


def test_category_without_training_meshes(dataset_dir, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(dataset_dir, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["categories"]["bottle"]["train"] = []
    (root / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(train("--dataset", root, "--category", "bottle", "--out", tmp_path / "u.pt"),
                   "training meshes")
    assert not (tmp_path / "u.pt").exists()


def test_missing_backgrounds_folder(dataset_dir, tmp_path):
    one_line_error(train("--dataset", dataset_dir, "--category", "bottle", "--out",
                         tmp_path / "u.pt", "--backgrounds", tmp_path / "nope"),
                   "backgrounds folder not found")


@pytest.mark.parametrize("content,fragment", [
    (b"\x00garbage, not a checkpoint" * 40, "not a readable U-Net checkpoint"),
    ("foreign", "not a regtool U-Net checkpoint"),
])
def test_resume_from_corrupted_or_foreign_checkpoint(dataset_dir, tmp_path, content, fragment):
    out = tmp_path / "u.pt"
    if content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, out)
    else:
        out.write_bytes(content)
    before = out.read_bytes()
    one_line_error(train("--dataset", dataset_dir, "--category", "bottle", "--out", out,
                         "--resume"), fragment)
    assert out.read_bytes() == before


def test_resume_without_checkpoint(dataset_dir, tmp_path):
    one_line_error(train("--dataset", dataset_dir, "--category", "bottle",
                         "--out", tmp_path / "u.pt", "--resume"), "no checkpoint")


@pytest.mark.gl
def test_resume_checkpoint_of_another_architecture(dataset_dir, tmp_path, tiny_unet,
                                                   tiny_config):
    out = tmp_path / "u.pt"
    shutil.copy(tiny_unet[0], out)
    cfg = tmp_path / "other.toml"
    cfg.write_text(tiny_config.read_text().replace("base_channels = 6", "base_channels = 10"))
    one_line_error(train("--dataset", dataset_dir, "--category", "bottle", "--out", out,
                         "--config", cfg, "--resume"), "architecture")
