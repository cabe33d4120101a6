"""Mesh checks: flipped faces and self-intersections are counted, on hand-made cases with a
known answer and on a procedural mesh folded through itself."""

from __future__ import annotations

import numpy as np
import trimesh

from regtool.geometry.quality import flipped_faces, intersecting_pairs, self_intersections


def test_two_crossing_triangles_are_one_intersection():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0],  # in z = 0
                  [0.2, 0.2, -0.5], [0.2, 0.2, 0.5], [0.9, 0.9, 0.0]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    assert intersecting_pairs(v, f).tolist() == [[0, 1]]
    v_apart = v.copy()
    v_apart[3:, 0] += 5.0  # moved away: no crossing
    assert self_intersections(v_apart, f) == 0


def test_a_vertex_pulled_across_the_opposite_edge_flips_its_faces():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float)
    f = np.array([[0, 1, 2], [1, 3, 2]])
    pulled = v.copy()
    pulled[2] = [0.3, -0.5, 0.0]  # across edge 0-1: face 0 flips; face 1 (1, 3, 2) does not
    assert flipped_faces(v, pulled, f) == 1
    collapsed = v.copy()
    collapsed[2] = [0.5, 0.0, 0.0]  # onto edge 0-1: zero area counts too
    assert flipped_faces(v, collapsed, f) == 1


def test_faces_sharing_a_vertex_are_not_counted():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.2, 0.5], [0.2, 0.2, -0.5]], float)
    f = np.array([[0, 1, 2], [0, 3, 4]])  # the second pierces the first but shares vertex 0
    assert self_intersections(v, f) == 0


def test_a_closed_mesh_folded_through_itself():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    assert self_intersections(v, f) == 0 and flipped_faces(v, v, f) == 0
    folded = v.copy()
    cap = v[:, 2] > 0.6
    folded[cap] = folded[cap] * [0.5, 0.5, 1.0] - [0.0, 0.0, 1.8]  # pushed through the bottom
    assert self_intersections(folded, f) > 0
    assert flipped_faces(v, folded, f) > 0
    assert flipped_faces(v, 2.0 * v + 0.3, f) == 0  # scaling and shifting flip nothing


def test_a_procedural_canonical_has_no_self_intersection(dataset_dir):
    from regtool.geometry.mesh import load_mesh

    mesh = load_mesh(dataset_dir / "bottle" / "canonical" / "bottle_canonical.ply")
    assert self_intersections(np.asarray(mesh.vertices), np.asarray(mesh.faces)) == 0
