"""Transfer of named points from the canonical to a registered (deformed) instance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from regtool.errors import RegistrationError
from regtool.registration.transfer import (
    far_from_surface,
    locate_points,
    parse_named_points,
    read_named_points,
    transfer_points,
    transfer_record,
)


def box():
    mesh = trimesh.creation.box(extents=(0.1, 0.06, 0.2))
    mesh = mesh.subdivide()  # a few more faces, vertex order kept by process=False below
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def affine(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.array([[1.3, 0.2, 0.0], [0.0, 0.8, 0.1], [0.05, 0.0, 1.1]])
    b = np.array([0.01, -0.02, 0.03])
    return vertices @ a.T + b, a, b


def test_surface_points_follow_an_affine_deformation():
    """Barycentric coordinates are affine-invariant: for a deformation A v + b of every vertex,
    a point on the canonical surface must land exactly on A p + b."""
    vertices, faces = box()
    deformed, a, b = affine(vertices)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    surface, _ = trimesh.sample.sample_surface(mesh, 20, seed=1)
    named = {f"p{i}": p for i, p in enumerate(surface)}
    named["corner"] = vertices[5]
    out = transfer_points(vertices, faces, deformed, named)
    assert list(out) == list(named)
    for name, p in named.items():
        np.testing.assert_allclose(out[name], a @ p + b, atol=1e-9)
    assert all(isinstance(c, float) for c in out["corner"])
    # Identity deformation: points on the surface stay where they are.
    same = transfer_points(vertices, faces, vertices, {"q": surface[3]})
    np.testing.assert_allclose(same["q"], surface[3], atol=1e-12)


def test_off_surface_point_is_projected():
    vertices, faces = box()
    # 1 cm outside the +z face (at z = 0.1), above its interior.
    point = np.array([0.01, 0.005, 0.11])
    (loc,) = locate_points(vertices, faces, point[None])
    assert loc.distance == pytest.approx(0.01, abs=1e-12)
    assert loc.barycentric.sum() == pytest.approx(1.0) and (loc.barycentric >= 0).all()
    on_face = loc.barycentric @ vertices[faces[loc.face]]
    np.testing.assert_allclose(on_face, [0.01, 0.005, 0.1], atol=1e-12)
    moved = transfer_points(vertices, faces, vertices + [0.0, 0.0, 0.05], {"grasp": point})
    np.testing.assert_allclose(moved["grasp"], [0.01, 0.005, 0.15], atol=1e-12)
    rec = transfer_record(vertices, faces, vertices, {"grasp": point}, units="m")
    assert rec["units"] == "m" and rec["frame"] == "object"
    assert rec["canonical"]["grasp"]["distance_to_surface"] == pytest.approx(0.01)
    assert rec["canonical"]["grasp"]["face"] == loc.face
    json.dumps(rec)  # JSON-ready


def test_mismatched_meshes_refused():
    vertices, faces = box()
    with pytest.raises(RegistrationError, match="vertex order"):
        transfer_points(vertices, faces, vertices[:-1], {"a": vertices[0]})
    with pytest.raises(RegistrationError, match="finite"):
        transfer_points(vertices, faces, vertices * np.nan, {"a": vertices[0]})
    with pytest.raises(RegistrationError, match="faces"):
        transfer_points(vertices, faces + len(vertices), vertices, {"a": vertices[0]})
    assert transfer_points(vertices, faces, vertices, {}) == {}


def test_read_named_points(tmp_path):
    path = tmp_path / "points.json"
    path.write_text(json.dumps({"points": {"tip": [10, 20, 30.5]}, "units": "mm"}))
    pts = read_named_points(path)
    np.testing.assert_allclose(pts["tip"], [0.01, 0.02, 0.0305])
    np.testing.assert_allclose(read_named_points(path, units="mm")["tip"], [10, 20, 30.5])
    path.write_text(json.dumps({"points": {"tip": [1, 2, 3]}}))  # units default to metres
    np.testing.assert_allclose(read_named_points(path)["tip"], [1, 2, 3])


@pytest.mark.parametrize("data, words", [
    ({}, "missing field 'points'"),
    ({"points": {}}, "non-empty object"),
    ({"points": [[0, 0, 0]]}, "non-empty object"),
    ({"points": {"a": [0, 0]}}, "point 'a' must be [x, y, z]"),
    ({"points": {"a": [0, 0, "1"]}}, "point 'a' must be [x, y, z]"),
    ({"points": {"a": [0, True, 1]}}, "point 'a' must be [x, y, z]"),
    ({"points": {"a": [0, float("nan"), 1]}}, "point 'a' has non-finite"),
    ({"points": {" ": [0, 0, 1]}}, "must not be empty"),
    ({"points": {"a": [0, 0, 1]}, "units": "furlong"}, "unknown length unit"),
])
def test_bad_points_files(tmp_path, data, words):
    path = tmp_path / "points.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RegistrationError) as exc:
        read_named_points(path)
    assert words in str(exc.value) and str(path) in str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(RegistrationError, match="not found"):
        read_named_points(tmp_path / "missing.json")
    with pytest.raises(RegistrationError):
        parse_named_points(data)


def test_example_points_lie_on_the_canonical_bottle(repo_root, dataset_dir):
    """configs/examples/points.json fits the built-in bottle as make-dataset writes it (centred
    on its bounding box): every point within a voxel of the surface, none flagged."""
    from regtool.data.dataset import load_category

    canonical = load_category(dataset_dir, "bottle").canonical
    named = read_named_points(repo_root / "configs" / "examples" / "points.json")
    vertices, faces = np.asarray(canonical.vertices), np.asarray(canonical.faces)
    locations = locate_points(vertices, faces, np.stack(list(named.values())))
    assert max(loc.distance for loc in locations) < 0.003  # within a voxel of the surface
    assert far_from_surface(vertices, faces, named) == {}
    # A taller, slimmer bottle (scaled about its centre): the cap moves up with it.
    deformed = vertices * np.array([0.9, 0.9, 1.2])
    out = transfer_points(vertices, faces, deformed, named)
    assert out["cap_top"][2] == pytest.approx(0.115 * 1.2, abs=0.004)
    assert abs(out["body_side"][0]) == pytest.approx(0.036 * 0.9, abs=0.004)


def test_points_far_from_the_surface_are_flagged():
    """Points given for a bottle standing on z = 0 (the old example) on a centred one: flagged
    by far_from_surface and in the transfer record; points on the surface are not."""
    vertices, faces = box()  # 0.1 x 0.06 x 0.2 m, diagonal 0.231 m: tolerance 11.6 mm
    named = {"on": np.array([0.05, 0.0, 0.0]), "near": np.array([0.06, 0.0, 0.0]),
             "above": np.array([0.0, 0.0, 0.2])}
    far = far_from_surface(vertices, faces, named)
    assert list(far) == ["above"] and far["above"] == pytest.approx(0.1)
    record = transfer_record(vertices, faces, vertices, named)
    assert record["far_from_surface"] == ["above"]
    assert record["surface_tolerance"] == pytest.approx(0.05 * np.sqrt(0.1**2 + 0.06**2 + 0.2**2))
    assert [record["canonical"][n]["far_from_surface"] for n in named] == [False, False, True]
