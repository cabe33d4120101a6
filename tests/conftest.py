"""Shared fixtures: the built-in procedural dataset, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from clitools import tiny_config_text

from regtool.config import MakeDatasetConfig


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """The default built-in dataset (4 categories, 10 train + 2 test each), seed 0, no contact
    sheets. Read-only for tests: copy it before changing anything."""
    from regtool.data.generate import make_dataset

    root = tmp_path_factory.mktemp("data") / "dataset"
    make_dataset(root, MakeDatasetConfig(contact_sheet=False), seed=0)
    return root


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


TINY_CONFIG = tiny_config_text()


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_unet(tmp_path_factory, dataset_dir, tiny_config):
    """(checkpoint path, CliRunner result) of `regtool train-unet` on the bottle category with
    the tiny config (400 steps of 4 views at 128x96: val IoU about 0.93; at 120 steps it was
    0.63, too weak for its feature map to localise the object, see test_compare.py)."""
    from typer.testing import CliRunner

    from regtool.cli import app

    out = tmp_path_factory.mktemp("unet") / "bottle" / "unet.pt"
    result = CliRunner().invoke(app, ["--seed", "3", "train-unet", "--dataset", str(dataset_dir),
                                      "--category", "bottle", "--out", str(out),
                                      "--config", str(tiny_config)])
    assert result.exit_code == 0, result.output
    return out, result
