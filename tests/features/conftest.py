"""Fixtures of the feature tests: a tiny U-Net trained once per session through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CONFIG = """
[render]
width = 128
height = 96

[unet]
base_channels = 6
depth = 3
feature_channels = 12
image_width = 128
image_height = 96
steps = 400
batch_size = 4
learning_rate = 0.003
val_views = 8
val_every = 100
checkpoint_every = 100
render_workers = 1
"""


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
