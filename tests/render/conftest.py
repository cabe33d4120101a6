"""Fixtures of the renderer tests: small meshes in the object frame and a posing helper."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

import regtool.render  # noqa: F401  (selects the PyOpenGL platform before OpenGL is imported)
from regtool.data.procedural import canonical_params, generate_mesh


@pytest.fixture(scope="session")
def ellipsoid() -> trimesh.Trimesh:
    """An icosphere (642 vertices) scaled to an ellipsoid 0.2 x 0.12 x 0.16 m whose centre is
    3 cm off the object origin, so rotations about the origin change the image."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    mesh.vertices = mesh.vertices * np.array([1.0, 0.6, 0.8]) + np.array([0.03, 0.0, 0.0])
    return mesh


@pytest.fixture(scope="session")
def drill() -> trimesh.Trimesh:
    """The built-in dataset's canonical drill (procedural generator, 5 mm grid), metres."""
    return generate_mesh("drill", canonical_params("drill"), 0.005)
