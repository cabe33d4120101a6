"""Small shape spaces of the built-in categories for the correspondence tests (few CPD points
and iterations: the oracle needs a shape space, not a good one)."""

from __future__ import annotations

import pytest

from regtool.config import ShapeSpaceConfig

SMALL_CPD = ShapeSpaceConfig(template_points=300, target_points=300, max_iterations=25)


@pytest.fixture(scope="session")
def small_spaces(dataset_dir, tmp_path_factory):
    """Return a function category -> ShapeSpace, each built once per session."""
    from regtool.shapespace.build import build_shapespace

    cache: dict = {}

    def get(category: str):
        if category not in cache:
            cache[category], _ = build_shapespace(dataset_dir, category, SMALL_CPD, seed=0)
        return cache[category]

    return get
