"""`regtool import-dataset`: a folder of the user's meshes -> a one-category regtool dataset.

The source folder holds one mesh per instance (PLY, OBJ, STL, OFF or GLB; a GLB scene is
concatenated into one mesh), all in one frame and one length unit (`units`). The result is a
dataset in the layout of `regtool.data.manifest`, meshes written as PLY in the same unit:

* canonical: the mesh named `canonical`, or with "medoid" the training mesh with the lowest sum
  of symmetric Chamfer distances to the other training meshes (MEDOID_POINTS surface points per
  mesh). The canonical is not a training mesh.
* test split: the meshes named in `test`, or `test_count` meshes drawn with `seed` (among all
  meshes but a named canonical; with "medoid" the medoid is then taken among the rest);
  default none. Every other mesh is a training mesh (at least MIN_TRAIN).
* frame: every mesh and point set is translated by one offset, minus the canonical's
  bounding-box centre, recorded in the manifest (`categories.<c>.offset`, dataset units).
* repair: a mesh that is not watertight, consistently wound and outward-facing is repaired
  where trimesh can (merge duplicate vertices, drop degenerate and duplicate faces, fill
  triangle and quad holes, fix winding and orientation); the steps are recorded per mesh in
  `categories.<c>.repaired`. A mesh that stays open is refused (MeshError naming the file),
  and so is a mesh more than 10x larger or smaller than the canonical (a file in another unit).
* evaluation points of test meshes: from `points_dir` (`NAME.ext` or `NAME_points.ext`, ext one
  of .ply .npy .xyz .txt .pcd, same frame and unit as the meshes; every test mesh needs one then)
  or `eval_points` points sampled (seeded) on the test mesh; `points_source` in the manifest says
  which.

Everything is checked before anything is written; the output folder is written atomically.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from regtool.data.manifest import (
    UNITS_TO_METRES,
    CategoryEntry,
    FileEntry,
    Manifest,
    TestEntry,
    manifest_to_dict,
    read_manifest,
)
from regtool.errors import DatasetError, MeshError, OutputError
from regtool.geometry.mesh import (
    MESH_SUFFIXES,
    POINT_SUFFIXES,
    load_mesh,
    load_points,
    save_mesh,
    save_points,
)
from regtool.io import atomic_dir, sha256_file, write_json_atomic

MIN_TRAIN = 3
MEDOID_POINTS = 2000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Repaired:
    """A loaded mesh after the repair check: the mesh and the repair steps applied ([] if
    none were needed)."""

    mesh: trimesh.Trimesh
    steps: list[str]


def is_sound(mesh: trimesh.Trimesh) -> bool:
    """Return True when the mesh (as indexed, no merging) is watertight, consistently wound and
    encloses a positive volume (outward normals)."""
    return bool(mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0)


def repair_mesh(mesh: trimesh.Trimesh, label: str) -> Repaired:
    """Return the mesh unchanged if it is sound (`is_sound`), else a repaired copy with the
    steps taken; MeshError naming `label` if it is still not watertight and consistent."""
    if is_sound(mesh):
        return Repaired(mesh, [])
    m = mesh.copy()
    steps = []
    n = len(m.vertices)
    m.merge_vertices(merge_tex=True, merge_norm=True)
    if len(m.vertices) < n:
        steps.append(f"merged {n - len(m.vertices)} duplicate vertices")
    n = len(m.faces)
    m.update_faces(m.nondegenerate_faces())
    m.update_faces(m.unique_faces())
    m.remove_unreferenced_vertices()
    if len(m.faces) < n:
        steps.append(f"removed {n - len(m.faces)} degenerate or duplicate faces")
    n = len(m.faces)
    trimesh.repair.fill_holes(m)
    if len(m.faces) > n:
        steps.append(f"filled holes with {len(m.faces) - n} faces")
    before = m.faces.copy()
    trimesh.repair.fix_normals(m)
    if len(m.faces) == len(before) and not np.array_equal(before, m.faces):
        steps.append("fixed winding / orientation")
    if not (m.is_watertight and m.is_winding_consistent):
        open_edges = len(trimesh.grouping.group_rows(m.edges_sorted, require_count=1))
        raise MeshError(f"{label}: not watertight or inconsistently wound even after repair "
                        f"({open_edges} open edges); close it (e.g. with ManifoldPlus) and "
                        f"import again")
    if not m.volume > 0:
        raise MeshError(f"{label}: encloses no volume after repair")
    return Repaired(trimesh.Trimesh(np.asarray(m.vertices, np.float64),
                                    np.asarray(m.faces, np.int64), process=False), steps)


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Return the symmetric Chamfer distance between point sets (N, 3) and (M, 3): mean
    nearest-neighbour distance a -> b plus b -> a (their units)."""
    from scipy.spatial import cKDTree

    return float(cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def medoid(meshes: dict[str, trimesh.Trimesh], seed: int,
           points: int = MEDOID_POINTS) -> tuple[str, dict[str, float]]:
    """Return (name, {name: summed Chamfer distance to the others}) of the medoid of `meshes`
    under the symmetric Chamfer distance between `points` seeded surface samples per mesh; ties
    go to the first name in sorted order."""
    from regtool.geometry.sampling import sample_surface

    names = sorted(meshes)
    rng = np.random.default_rng(seed)
    samples = [sample_surface(np.asarray(meshes[n].vertices, np.float64),
                              np.asarray(meshes[n].faces, np.int64), points, rng) for n in names]
    total = np.zeros(len(names))
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            d = chamfer(samples[i], samples[j])
            total[i] += d
            total[j] += d
    return names[int(np.argmin(total))], {n: float(t) for n, t in zip(names, total)}


def _check_sizes(canonical: trimesh.Trimesh, meshes: dict[Path, trimesh.Trimesh],
                 units: str) -> None:
    """MeshError naming the first mesh more than SIZE_ERROR_RATIO times larger or smaller than
    the canonical (a file in another unit)."""
    from regtool.data.dataset import SIZE_ERROR_RATIO, mesh_size, size_message, size_ratio

    reference = mesh_size(canonical.vertices)
    for path, mesh in meshes.items():
        size = mesh_size(mesh.vertices)
        if size_ratio(size, reference) > SIZE_ERROR_RATIO:
            raise MeshError(size_message(str(path), size, reference, units)
                            + f" (more than {SIZE_ERROR_RATIO:g}x: refused)")


def _is_dataset(path: Path) -> bool:
    """Return True when `path` is a folder holding a regtool manifest."""
    try:
        read_manifest(path)
    except DatasetError:
        return False
    return path.is_dir()


def _check_out(out: Path, src: Path, overwrite: bool) -> None:
    """OutputError unless `out` may be written: new, an earlier regtool dataset, or anything
    with `overwrite`; never SRC itself or a folder holding it."""
    resolved, src_resolved = out.resolve(), src.resolve()
    if resolved == src_resolved or resolved in src_resolved.parents:
        raise OutputError(f"--out {out} would replace the source folder {src}")
    if not resolved.name:
        raise OutputError(f"--out {out} names no folder")
    if out.exists() and not overwrite and not _is_dataset(out):
        kind = "folder" if out.is_dir() else "file"
        raise OutputError(f"--out {out} exists and is a {kind} that is not a regtool dataset; "
                          f"choose another path or pass --overwrite to replace it")


def _mesh_files(src: Path) -> dict[str, Path]:
    """Return {stem: path} of the mesh files in `src` (not recursive); DatasetError if there
    are none, or two share a stem, or a stem is not a usable name."""
    if not src.is_dir():
        raise DatasetError(f"source folder not found: {src}")
    files = sorted(p for p in src.iterdir()
                   if p.is_file() and p.suffix.lower() in MESH_SUFFIXES)
    if not files:
        raise DatasetError(f"{src} holds no mesh files ({', '.join(MESH_SUFFIXES)})")
    found: dict[str, Path] = {}
    for p in files:
        if p.stem in found:
            raise DatasetError(f"{src}: two meshes named '{p.stem}' ({found[p.stem].name}, "
                               f"{p.name}); rename one")
        if not _NAME.match(p.stem):
            raise DatasetError(f"{p}: mesh names may hold letters, digits, '_', '-' and '.' "
                               f"only")
        found[p.stem] = p
    return found


def _points_files(points_dir: Path, names: list[str]) -> dict[str, Path]:
    """Return {test name: point file} from `points_dir`; DatasetError if the folder is missing,
    or a test mesh has no point file or more than one."""
    if not points_dir.is_dir():
        raise DatasetError(f"--points-dir folder not found: {points_dir}")
    found = {}
    for name in names:
        cands = [points_dir / f"{stem}{ext}" for stem in (name, f"{name}_points")
                 for ext in POINT_SUFFIXES if (points_dir / f"{stem}{ext}").is_file()]
        if not cands:
            raise DatasetError(f"{points_dir}: no evaluation points for test mesh '{name}' "
                               f"(expected {name}.ply/.npy/.xyz/.txt/.pcd or {name}_points.*)")
        if len(cands) > 1:
            raise DatasetError(f"{points_dir}: several point files for '{name}': "
                               f"{', '.join(p.name for p in cands)}")
        found[name] = cands[0]
    return found


def split_names(names: list[str], canonical: str, test: list[str] | None,
                test_count: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Return (test names, training pool) from the sorted mesh names: the pool still holds the
    canonical (named or "medoid", chosen later). DatasetError for unknown or repeated names, a
    named canonical among the tests, a bad count, or fewer than MIN_TRAIN training meshes."""
    if canonical != "medoid" and canonical not in names:
        raise DatasetError(f"canonical mesh '{canonical}' not found (meshes: "
                           f"{', '.join(names)}); give a file name without its suffix, or medoid")
    if test is not None and test_count is not None:
        raise DatasetError("give --test or --test-count, not both")
    others = [n for n in names if n != canonical]
    if test is not None:
        unknown = [t for t in test if t not in names]
        if unknown:
            raise DatasetError(f"test mesh '{unknown[0]}' not found (meshes: {', '.join(names)})")
        if len(set(test)) != len(test):
            raise DatasetError("--test names a mesh twice")
        if canonical in test:
            raise DatasetError(f"the canonical '{canonical}' cannot be a test mesh")
        tests = sorted(test)
    else:
        count = test_count or 0
        if count < 0 or count > len(others):
            raise DatasetError(f"--test-count must be between 0 and {len(others)}, got {count}")
        rng = np.random.default_rng(seed)
        tests = sorted(str(n) for n in rng.choice(others, size=count, replace=False))
    pool = [n for n in names if n not in tests]
    if len(pool) - 1 < MIN_TRAIN:
        raise DatasetError(f"{len(pool) - 1} training meshes left besides the canonical and "
                           f"{len(tests)} test meshes; at least {MIN_TRAIN} are needed")
    return tests, pool


def import_dataset(src: Path, category: str, out: Path, *, units: str = "m",
                   canonical: str = "medoid", test: list[str] | None = None,
                   test_count: int | None = None, points_dir: Path | None = None,
                   overwrite: bool = False, seed: int = 0, eval_points: int = 2000,
                   progress: Progress | None = None) -> Manifest:
    """Write the meshes of `src` as category `category` of a new dataset at `out` (see the
    module docstring) and return its manifest. Coordinates stay in `units` (m, cm or mm), the
    frame is shifted by the recorded offset. DatasetError / MeshError / OutputError for bad
    input, before anything is written; `out` is replaced atomically."""
    src, out = Path(src), Path(out)
    if units not in UNITS_TO_METRES:
        raise DatasetError(f"--units must be one of {', '.join(UNITS_TO_METRES)}, got {units!r}")
    if not _NAME.match(category):
        raise DatasetError(f"category name {category!r}: use letters, digits, '_', '-' and '.'")
    files = _mesh_files(src)
    names = sorted(files)
    tests, pool = split_names(names, canonical, test, test_count, seed)
    point_files = _points_files(Path(points_dir), tests) if points_dir is not None else {}
    _check_out(out, src, overwrite)

    meshes: dict[str, Repaired] = {}
    for name in names:
        meshes[name] = repair_mesh(load_mesh(files[name]), str(files[name]))
        if progress:
            progress(f"read {files[name].name}")
    given = {n: load_points(p) for n, p in point_files.items()}

    medoid_scores = None
    if canonical == "medoid":
        canonical, medoid_scores = medoid({n: meshes[n].mesh for n in pool}, seed)
    train = [n for n in pool if n != canonical]
    canon = meshes[canonical].mesh
    _check_sizes(canon, {files[n]: meshes[n].mesh for n in names if n != canonical}, units)
    offset = 0.0 - 0.5 * (canon.vertices.min(axis=0) + canon.vertices.max(axis=0))  # no -0.0

    def moved(name: str) -> trimesh.Trimesh:
        m = meshes[name].mesh
        return trimesh.Trimesh(np.asarray(m.vertices) + offset, m.faces, process=False)

    from regtool.geometry.sampling import sample_surface

    rng = np.random.default_rng(seed)
    with atomic_dir(out, overwrite=True) as tmp:
        def save(name: str, split: str) -> FileEntry:
            rel = f"{category}/{split}/{name}.ply"
            m = moved(name)
            save_mesh(tmp / rel, m.vertices, m.faces)
            if progress:
                progress(f"{category}/{split}/{name}")
            return FileEntry(name, rel, sha256_file(tmp / rel))

        canonical_entry = save(canonical, "canonical")
        train_entries = tuple(save(n, "train") for n in train)
        test_entries = []
        for name in tests:
            entry = save(name, "test")
            if name in given:
                points, source = given[name] + offset, "file"
            else:
                m = moved(name)
                points = sample_surface(np.asarray(m.vertices, np.float64),
                                        np.asarray(m.faces, np.int64), eval_points, rng)
                source = "sampled"
            rel = f"{category}/test/{name}_points.ply"
            save_points(tmp / rel, points)
            test_entries.append(TestEntry(
                entry, FileEntry(f"{name}_points", rel, sha256_file(tmp / rel)), source))
        extra = {"repaired": {n: r.steps for n, r in meshes.items() if r.steps},
                 "sources": {n: files[n].name for n in names}}
        category_entry = CategoryEntry(
            category, canonical_entry, train_entries, tuple(test_entries),
            offset=(float(offset[0]), float(offset[1]), float(offset[2])), extra=extra)
        importer = {"source": str(src.resolve()), "units": units, "seed": seed,
                    "canonical": "medoid" if medoid_scores is not None else "named"}
        if medoid_scores is not None:
            importer["medoid_chamfer_sums"] = medoid_scores
        if point_files and points_dir is not None:  # point_files come from points_dir
            importer["points_dir"] = str(Path(points_dir).resolve())
        manifest = Manifest(name=src.resolve().name or category, units=units, up_axis="z",
                            categories={category: category_entry}, extra={"importer": importer})
        write_json_atomic(tmp / "manifest.json", manifest_to_dict(manifest))
    return manifest


__all__ = ["import_dataset", "repair_mesh", "medoid", "chamfer", "split_names", "MIN_TRAIN"]
