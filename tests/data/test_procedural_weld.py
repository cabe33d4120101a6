"""Issue 12, point 15: the meshes make-dataset writes stay watertight when loaded the way most
users load a mesh (`trimesh.load`, which merges coincident vertices)."""

from __future__ import annotations

import numpy as np
import trimesh

from regtool.config import MakeDatasetConfig
from regtool.data.generate import make_dataset
from regtool.data.manifest import read_manifest
from regtool.data.procedural import weld


def _mesh_paths(root):
    manifest = read_manifest(root)
    for c in manifest.categories.values():
        for entry in (c.canonical, *c.train, *(t.mesh for t in c.test)):
            yield root / entry.path


def _check_stable_under_default_load(root) -> int:
    n = 0
    for path in _mesh_paths(root):
        as_written = trimesh.load(path, process=False)
        as_users_load = trimesh.load(path)  # process=True: merges vertices
        assert as_users_load.is_watertight and as_users_load.is_winding_consistent, path
        assert len(as_users_load.vertices) == len(as_written.vertices), path
        assert as_written.is_watertight, path
        n += 1
    return n


def test_every_mesh_of_the_builtin_dataset_survives_trimesh_load(dataset_dir):
    assert _check_stable_under_default_load(dataset_dir) == 4 * (1 + 10 + 2)


def test_camera_and_drill_with_seed_7(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root, MakeDatasetConfig(categories=("camera", "drill"), n_train=2, n_test=1,
                                         eval_points=10, contact_sheet=False), seed=7)
    assert _check_stable_under_default_load(root) == 2 * (1 + 2 + 1)


def test_weld_merges_coincident_vertices_and_drops_collapsed_faces():
    # A tetrahedron whose apex is emitted twice, plus a sliver face between the two copies.
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], float)
    f = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 4], [2, 0, 4], [1, 4, 3]])
    mesh = trimesh.Trimesh(v, f, process=False)
    assert not mesh.is_watertight
    welded = weld(mesh)
    assert len(welded.vertices) == 4 and len(welded.faces) == 4
    assert welded.is_watertight and welded.is_winding_consistent
    clean = trimesh.creation.icosphere(1)
    clean = trimesh.Trimesh(clean.vertices, clean.faces, process=False)
    assert weld(clean) is clean  # nothing to merge: the very same mesh (same bytes written)
