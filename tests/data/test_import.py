"""`regtool import-dataset`: the bottle category of the built-in dataset written as a user would
have it (shifted 10 cm, in mm, a mix of formats, one mesh with holes) and imported back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app
from regtool.data.importer import import_dataset, medoid, repair_mesh
from regtool.data.manifest import read_manifest, verify_dataset
from regtool.errors import DatasetError, MeshError, OutputError
from regtool.geometry.mesh import load_mesh, load_points
from regtool.units import UNITS_TO_METRES

runner = CliRunner()
SHIFT_MM = np.array([60.0, 0.0, 80.0])  # 10 cm
FORMATS = (".obj", ".stl", ".off", ".glb", ".ply")
OPEN_MESH = "bottle_train_03"
# The faces deleted from OPEN_MESH (3 holes) are among its last ones: hole filling appends its
# faces, so the repaired mesh keeps nearly the original face order, on which the seeded surface
# sampling of build-shapespace depends (holes elsewhere give this mesh other random samples and
# the shape space other low-variance components).
OPEN_FACES = 3


def _last_separate_faces(faces: np.ndarray, count: int) -> list[int]:
    """Return the indices of the last `count` faces, from the end, that share no vertex."""
    chosen, used = [], set()
    for i in range(len(faces) - 1, -1, -1):
        if used.isdisjoint(faces[i].tolist()):
            chosen.append(i)
            used.update(faces[i].tolist())
            if len(chosen) == count:
                break
    return chosen
TESTS = ["bottle_test_00", "bottle_test_01"]


def write_source(dataset: Path, src: Path, points_dir: Path, category: str = "bottle") -> dict:
    """Write every mesh of `category` into `src` in mm, shifted by SHIFT_MM, in a mix of formats
    (the canonical as PLY), OPEN_MESH with 3 faces deleted, and the test meshes' evaluation
    points into `points_dir` (.npy and .xyz); return {name: source file name}."""
    data = json.loads((dataset / "manifest.json").read_text())["categories"][category]
    src.mkdir(parents=True)
    points_dir.mkdir(parents=True)
    files = {}
    for i, e in enumerate([data["canonical"], *data["train"], *data["test"]]):
        mesh = load_mesh(dataset / e["path"])
        vertices = np.asarray(mesh.vertices) * 1000.0 + SHIFT_MM
        faces = np.asarray(mesh.faces)
        ext = ".ply" if i == 0 else FORMATS[i % len(FORMATS)]
        if e["name"] == OPEN_MESH:
            faces = np.delete(faces, _last_separate_faces(faces, OPEN_FACES), axis=0)
        files[e["name"]] = f"{e['name']}{ext}"
        trimesh.Trimesh(vertices, faces, process=False).export(src / files[e["name"]])
    for t, ext in zip(data["test"], (".npy", ".xyz")):
        points = load_points(dataset / t["eval_points"]["path"]) * 1000.0 + SHIFT_MM
        if ext == ".npy":
            np.save(points_dir / f"{t['name']}.npy", points)
        else:
            np.savetxt(points_dir / f"{t['name']}.xyz", points, fmt="%.9f")
    return files


@pytest.fixture(scope="module")
def source(dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    files = write_source(dataset_dir, root / "meshes", root / "points")
    return root / "meshes", root / "points", files


def _import_args(src, points, out, *extra):
    return ["import-dataset", str(src), "--category", "bottle", "--out", str(out),
            "--units", "mm", "--canonical", "bottle_canonical", "--test", ",".join(TESTS),
            "--points-dir", str(points), *extra]


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    src, points, _ = source
    out = tmp_path_factory.mktemp("imported") / "dataset"
    result = runner.invoke(app, _import_args(src, points, out))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_import_writes_a_dataset_check_dataset_accepts(imported):
    out, output = imported
    result = runner.invoke(app, ["check-dataset", str(out)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert "contents valid; units: mm" in result.output
    assert f"repaired {OPEN_MESH}.ply: filled holes with 3 faces" in output


def test_manifest_records_split_offset_repair_and_points_source(imported, source, dataset_dir):
    out, _ = imported
    _, _, files = source
    m = read_manifest(out)
    c = m.categories["bottle"]
    original = read_manifest(dataset_dir).categories["bottle"]
    assert m.units == "mm"
    assert c.canonical.name == "bottle_canonical"
    assert c.canonical.path == "bottle/canonical/bottle_canonical.ply"
    assert [e.name for e in c.train] == [e.name for e in original.train]
    assert [t.mesh.name for t in c.test] == TESTS
    assert [t.points_source for t in c.test] == ["file", "file"]
    # The canonical's bounding-box centre was at the origin before the 10 cm shift.
    np.testing.assert_allclose(c.offset, -SHIFT_MM, atol=1e-4)
    assert c.extra["sources"] == files
    assert c.extra["repaired"][OPEN_MESH] == ["filled holes with 3 faces"]
    stl = {n for n, f in files.items() if f.endswith(".stl")}
    assert stl and set(c.extra["repaired"]) == stl | {OPEN_MESH}  # STL stores no shared vertices
    assert all(steps[0].startswith("merged") for n, steps in c.extra["repaired"].items()
               if n in stl)
    again = json.loads((out / "manifest.json").read_text())
    assert again["categories"]["bottle"]["offset"] == list(c.offset)


def test_meshes_and_points_are_back_in_mm_in_the_original_frame(imported, source, dataset_dir):
    out, _ = imported
    _, _, files = source
    original = read_manifest(dataset_dir).categories["bottle"]
    c = read_manifest(out).categories["bottle"]
    new = {e.name: e for e in (c.canonical, *c.train, *(t.mesh for t in c.test))}
    for e in (original.canonical, *original.train, *(t.mesh for t in original.test)):
        before = np.asarray(load_mesh(dataset_dir / e.path).vertices) * 1000.0
        after = np.asarray(load_mesh(out / new[e.name].path).vertices)
        tol = 1e-4  # mm: PLY and GLB files hold float32 coordinates
        if files[e.name].endswith(".stl"):  # vertices merged: compare as sets
            from scipy.spatial import cKDTree

            assert cKDTree(before).query(after)[0].max() < tol
            assert cKDTree(after).query(before)[0].max() < tol
        else:
            np.testing.assert_allclose(after, before, atol=tol)
    for t_old, t_new in zip(original.test, c.test):
        np.testing.assert_allclose(load_points(out / t_new.eval_points.path),
                                   load_points(dataset_dir / t_old.eval_points.path) * 1000.0,
                                   atol=1e-4)


def test_repaired_mesh_is_the_original_surface(imported, dataset_dir):
    out, _ = imported
    repaired = load_mesh(out / f"bottle/train/{OPEN_MESH}.ply")
    assert repaired.is_watertight and repaired.is_winding_consistent and repaired.volume > 0
    before = load_mesh(dataset_dir / f"bottle/train/{OPEN_MESH}.ply")
    assert len(repaired.faces) == len(before.faces)
    np.testing.assert_allclose(repaired.volume, before.volume * 1e9, rtol=1e-6)  # float32 files


def test_sampled_points_and_seeded_test_count(source, tmp_path):
    src, _, _ = source
    m1 = import_dataset(src, "bottle", tmp_path / "a", units="mm", test_count=2, seed=3)
    m2 = import_dataset(src, "bottle", tmp_path / "b", units="mm", test_count=2, seed=3)
    c1, c2 = m1.categories["bottle"], m2.categories["bottle"]
    assert [t.mesh.name for t in c1.test] == [t.mesh.name for t in c2.test]
    assert len(c1.test) == 2 and len(c1.train) == 10
    assert c1.canonical.name not in [t.mesh.name for t in c1.test]
    assert [t.points_source for t in c1.test] == ["sampled", "sampled"]
    assert (tmp_path / "a" / "manifest.json").read_bytes() != b""
    for t in c1.test:  # 2000 points (make_dataset's eval_points) on the recentred mesh
        points = load_points(tmp_path / "a" / t.eval_points.path)
        mesh = load_mesh(tmp_path / "a" / t.mesh.path)
        assert points.shape == (2000, 3)
        assert np.abs(trimesh.proximity.signed_distance(mesh, points[:200])).max() < 1e-4
    default = import_dataset(src, "bottle", tmp_path / "c", units="mm")
    assert default.categories["bottle"].test == ()  # no test meshes by default


def test_medoid_is_the_middle_shape(tmp_path):
    src = tmp_path / "boxes"
    src.mkdir()
    for i, h in enumerate((1.0, 1.2, 1.4, 1.6, 1.8, 2.6)):
        trimesh.creation.box((1.0, 1.0, h)).export(src / f"box_{i}.ply")
    name, sums = medoid({p.stem: load_mesh(p) for p in src.iterdir()}, seed=0)
    assert name == "box_2" and min(sums, key=sums.get) == "box_2"
    m = import_dataset(src, "box", tmp_path / "out")
    c = m.categories["box"]
    assert c.canonical.name == "box_2"
    assert [e.name for e in c.train] == ["box_0", "box_1", "box_3", "box_4", "box_5"]
    assert m.extra["importer"]["canonical"] == "medoid"


def test_unrepairable_mesh_is_refused_naming_the_file(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)
    mesh = trimesh.Trimesh(sphere.vertices, sphere.faces[sphere.vertices[sphere.faces][:, :, 2]
                                                         .min(axis=1) < 0.5], process=False)
    with pytest.raises(MeshError, match="cap.ply: not watertight"):
        repair_mesh(mesh, "cap.ply")
    flipped = trimesh.Trimesh(sphere.vertices, sphere.faces[:, ::-1], process=False)
    fixed = repair_mesh(flipped, "inside_out.ply")
    assert fixed.steps == ["fixed winding / orientation"] and fixed.mesh.volume > 0
    assert repair_mesh(sphere, "sound.ply").steps == []


def _boxes(folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        trimesh.creation.box((1.0, 1.0, 1.0 + 0.1 * i)).export(folder / f"box_{i}.obj")
    return folder


@pytest.mark.parametrize("case, fragment", [
    ("empty", "holds no mesh files"),
    ("unknown canonical", "canonical mesh 'nope' not found"),
    ("unreadable", "cannot read mesh"),
    ("nan", "NaN"),
    ("too few", "at least 3 are needed"),
    ("user folder", "is a folder that is not a regtool dataset"),
    ("unknown test", "test mesh 'box_9' not found"),
    ("missing points", "no evaluation points for test mesh 'box_1'"),
    ("units", "--units must be one of"),
    ("unit mix-up", "box_4.obj: size"),
    ("out is src", "would replace the source folder"),
])
def test_bad_input_is_refused_before_writing(tmp_path, case, fragment):
    src = _boxes(tmp_path / "src", 6)
    out = tmp_path / "out"
    args = ["import-dataset", str(src), "--category", "box", "--out", str(out)]
    if case == "empty":
        src = tmp_path / "empty"
        src.mkdir()
        args[1] = str(src)
    elif case == "unknown canonical":
        args += ["--canonical", "nope"]
    elif case == "unreadable":
        (src / "box_2.obj").write_bytes(b"\x00\xff" * 10)
    elif case == "nan":
        (src / "box_2.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"
                                       "f 1 2 3\nf 1 3 4\nf 1 4 2\nf 2 4 3\n")
    elif case == "too few":
        args += ["--test", "box_1,box_2,box_3"]
    elif case == "user folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "unknown test":
        args += ["--test", "box_9"]
    elif case == "missing points":
        (tmp_path / "points").mkdir()
        np.save(tmp_path / "points" / "box_0.npy", np.zeros((5, 3)))
        args += ["--test", "box_0,box_1", "--points-dir", str(tmp_path / "points")]
    elif case == "units":
        args += ["--units", "inch"]
    elif case == "unit mix-up":  # this one in mm among meshes in m
        trimesh.creation.box((1000.0, 1000.0, 1400.0)).export(src / "box_4.obj")
    elif case == "out is src":
        args[args.index("--out") + 1] = str(src)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = runner.invoke(app, args)
    one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written or removed
    if case == "user folder":
        assert (out / "notes.txt").read_text() == "mine"


def test_existing_dataset_is_replaced_and_user_folder_only_with_overwrite(tmp_path):
    src = _boxes(tmp_path / "src")
    out = tmp_path / "out"
    import_dataset(src, "box", out)
    import_dataset(src, "box", out, canonical="box_0")  # an earlier dataset: replaced
    assert read_manifest(out).categories["box"].canonical.name == "box_0"
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(OutputError):
        import_dataset(src, "box", user)
    import_dataset(src, "box", user, overwrite=True)
    assert not (user / "notes.txt").exists() and (user / "manifest.json").is_file()
    with pytest.raises(DatasetError, match="not both"):
        import_dataset(src, "box", out, test=["box_1"], test_count=1)
    verify_dataset(out)


def test_glb_scene_is_concatenated(tmp_path):
    src = _boxes(tmp_path / "src", 4)
    a = trimesh.creation.box((1.0, 1.0, 1.0))
    b = trimesh.creation.box((1.0, 1.0, 1.0))
    b.apply_translation((3.0, 0.0, 0.0))
    trimesh.Scene([a, b]).export(src / "pair.glb")
    m = import_dataset(src, "box", tmp_path / "out", canonical="box_0")
    pair = load_mesh(tmp_path / "out" / "box" / "train" / "pair.ply")
    assert len(pair.faces) == 24
    assert pair.body_count == 2
    assert m.categories["box"].extra["sources"]["pair"] == "pair.glb"


# --- slow: the same Table-1 numbers on the original and the imported bottle category -----------

# The columns computed in 3D agree to 0.41 % (measured). The RGB columns are not compared
# instance by instance: the source files round the vertices (STL and GLB store float32 mm, about
# 4 nm at 10 cm), and U-Net training turns such differences in a few rendered pixels into
# another network, whose object outline differs by a fraction of a pixel (3.6 mm at 160x120 and
# 0.6 m). Measured (session 11, this test's data, quick profile; mm, bottle_test_00 / _01):
# rgb_known 1.56 / 1.56 (original) and 1.85 / 1.81 (imported); the original run's U-Net on the
# imported data 1.69 / 1.57. With 60 registration iterations instead of 20 the data no longer
# matter (one U-Net: 1.69 / 1.54 original, 1.67 / 1.57 imported) and the U-Net still does
# (1.90 / 1.58 with the imported run's network on the imported data, 1.91 / 1.62 on the original).
COLUMNS_3D = ("canonical", "latent_gt", "cpd_3d", "latent_3d_known", "latent_3d_noisy")
COLUMNS_RGB = ("rgb_known", "rgb_noisy")


def _run_pipeline(dataset: Path, run: Path, config: str) -> tuple[dict, dict]:
    """build-shapespace + train-unet + evaluate on the bottle category; return (results.json,
    the U-Net's metrics)."""
    for args in (
            ["build-shapespace", "--dataset", str(dataset), "--category", "bottle",
             "--out", str(run / "bottle" / "shapespace.npz")],
            ["train-unet", "--dataset", str(dataset), "--category", "bottle",
             "--out", str(run / "bottle" / "unet.pt")],
            ["evaluate", "--dataset", str(dataset), "--category", "bottle",
             "--shapespace", str(run / "{category}" / "shapespace.npz"),
             "--unet", str(run / "{category}" / "unet.pt"), "--out", str(run / "evaluation")]):
        result = runner.invoke(app, ["--seed", "0", *args, "--config", config])
        assert result.exit_code == 0, result.output
    return (json.loads((run / "evaluation" / "results.json").read_text()),
            json.loads((run / "bottle" / "unet.json").read_text())["metrics"])


def _rows_mm(report: dict) -> dict[str, dict[str, float]]:
    scale = UNITS_TO_METRES[report["units"]] * 1000.0
    return {r["instance"]: {c: r[c]["mean"] * scale for c in COLUMNS_3D + COLUMNS_RGB}
            for r in report["rows"]}


@pytest.mark.slow
@pytest.mark.gl
def test_imported_dataset_gives_the_original_numbers(tmp_path, repo_root):
    from regtool.config import MakeDatasetConfig
    from regtool.data.generate import make_dataset

    quick = str(repo_root / "configs" / "quick.toml")
    original = tmp_path / "original"
    make_dataset(original, MakeDatasetConfig(categories=("bottle",), contact_sheet=False), 0)
    src, points = tmp_path / "src" / "meshes", tmp_path / "src" / "points"
    write_source(original, src, points)
    result = runner.invoke(app, _import_args(src, points, tmp_path / "imported"))
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["check-dataset", str(tmp_path / "imported")])
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    report, unet = _run_pipeline(original, tmp_path / "run_original", quick)
    report_imported, unet_imported = _run_pipeline(tmp_path / "imported",
                                                   tmp_path / "run_imported", quick)
    before, after = _rows_mm(report), _rows_mm(report_imported)
    print(json.dumps({"original_mm": before, "imported_mm": after}, indent=1))
    assert sorted(before) == sorted(after) == TESTS
    for name in TESTS:
        for column in COLUMNS_3D:
            assert after[name][column] == pytest.approx(before[name][column], rel=0.02), (
                name, column, before[name], after[name])
        for rows in (before, after):  # registration from RGB works on both
            assert rows[name]["rgb_known"] <= 0.6 * rows[name]["canonical"], (name, rows[name])
    for key in ("val_iou", "test_iou"):  # the two U-Nets segment equally well
        assert unet_imported[key] == pytest.approx(unet[key], abs=0.01), (key, unet, unet_imported)
    shutil.rmtree(tmp_path / "src")

def test_manifest_round_trips_and_old_manifests_stay_valid(imported, dataset_dir):
    from regtool.data.manifest import manifest_to_dict, parse_manifest

    out, _ = imported
    written = json.loads((out / "manifest.json").read_text())
    assert manifest_to_dict(read_manifest(out)) == written
    old = json.loads((dataset_dir / "manifest.json").read_text())
    assert manifest_to_dict(parse_manifest(old)) == old  # no optional field appears
    assert read_manifest(dataset_dir).categories["bottle"].offset is None
    for bad in ([1.0, 2.0], [1.0, float("nan"), 0.0], "0 0 0", [True, 0, 0]):
        broken = json.loads(json.dumps(written))
        broken["categories"]["bottle"]["offset"] = bad
        with pytest.raises(DatasetError, match="offset must be a list of 3 finite numbers"):
            parse_manifest(broken)
    broken = json.loads(json.dumps(written))
    broken["categories"]["bottle"]["test"][0]["points_source"] = "guessed"
    with pytest.raises(DatasetError, match="points_source must be one of file, sampled"):
        parse_manifest(broken)


def test_train_unet_renders_a_mm_dataset_in_metres(imported, dataset_dir):
    from regtool.features.train import load_view_meshes

    out, _ = imported
    train_mm, test_mm = load_view_meshes(out, ["bottle"])
    train_m, test_m = load_view_meshes(dataset_dir, ["bottle"])
    assert [v.name for v in train_mm] == [v.name for v in train_m]
    for a, b in zip(train_mm + test_mm, train_m + test_m):
        np.testing.assert_allclose(a.vertices.min(0), b.vertices.min(0), atol=1e-7)
        np.testing.assert_allclose(a.vertices.max(0), b.vertices.max(0), atol=1e-7)


@pytest.mark.gl
def test_register_on_a_mm_dataset_takes_poses_in_metres(imported, dataset_dir, tiny_unet,
                                                        tiny_config, tmp_path):
    """Poses are in metres whatever the dataset's unit: `register` with the shape space of the
    imported (mm) bottle accepts the true pose of an observation (before the fix it refused it,
    reading the canonical's mm as metres: 'the camera is inside the object') and moves the shape
    towards the instance."""
    from regtool.config import ShapeSpaceConfig
    from regtool.evaluation.metrics import point_to_mesh_vertex_distances
    from regtool.geometry.camera import CameraIntrinsics, Pose
    from regtool.shapespace.build import build_shapespace

    out, _ = imported
    config = ShapeSpaceConfig(template_points=400, target_points=400, max_iterations=40)
    space, report = build_shapespace(out, "bottle", config, seed=0)
    assert space.units == "mm"
    space.save(tmp_path / "shapespace.npz", report)
    cam = CameraIntrinsics.from_fov(128, 96, 40.0)
    (tmp_path / "camera.json").write_text(json.dumps(cam.to_dict()))
    (tmp_path / "pose.json").write_text(json.dumps(Pose.look_at(0.6, 30.0, 20.0).to_dict()))
    result = runner.invoke(app, ["--seed", "2", "render-view", "--mesh",
                                 str(dataset_dir / "bottle/test/bottle_test_00.ply"),
                                 "--camera", str(tmp_path / "camera.json"),
                                 "--pose", str(tmp_path / "pose.json"),
                                 "--out", str(tmp_path / "obs.png")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [
        "register", "--shapespace", str(tmp_path / "shapespace.npz"), "--unet",
        str(tiny_unet[0]), "--image", str(tmp_path / "obs.png"), "--camera",
        str(tmp_path / "camera.json"), "--pose", str(tmp_path / "pose.json"),
        "--out", str(tmp_path / "reg"), "--iterations", "10", "--config", str(tiny_config)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "reg" / "result.json").read_text())
    assert record["units"] == "mm"
    # The imported space is recentred on the canonical's box centre, as the original (to 2 nm).
    points = load_points(dataset_dir / "bottle/test/bottle_test_00_points.ply") * 1000.0
    deformed = space.deform_numpy(record["z"])
    before = point_to_mesh_vertex_distances(points, space.canonical_vertices).mean()
    after = point_to_mesh_vertex_distances(points, deformed).mean()
    assert after < 0.8 * before, (before, after)
