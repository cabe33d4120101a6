"""Shared fixtures: the built-in procedural dataset, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

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
