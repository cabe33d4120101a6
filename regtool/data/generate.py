"""`regtool make-dataset`: write the procedural categories as a dataset with its manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from regtool.config import MakeDatasetConfig
from regtool.data.manifest import (
    FORMAT,
    VERSION,
    CategoryEntry,
    FileEntry,
    Manifest,
    Mirror,
    Symmetry,
    TestEntry,
    manifest_to_dict,
)
from regtool.data.procedural import (
    MIRROR_NORMALS,
    SYMMETRY_AXES,
    canonical_params,
    generate_mesh,
    sample_params,
    spec_of,
)
from regtool.errors import OutputError
from regtool.geometry.mesh import save_mesh, save_points
from regtool.io import atomic_dir, check_output_dir, sha256_file, write_json_atomic

Progress = Callable[[str], None]


def _category_seed(seed: int, category: str) -> np.random.SeedSequence:
    """A seed sequence per (seed, category): categories are independent of which others are
    generated alongside them."""
    return np.random.SeedSequence([seed, sum(ord(ch) * 131 ** i for i, ch in enumerate(category))
                                   % (2 ** 32)])


def write_category(root: Path, category: str, config: MakeDatasetConfig, seed: int,
                   progress: Progress | None = None) -> CategoryEntry:
    """Write one category under `root/category` and return its manifest entry.

    All instances are translated by the same offset, which centres the canonical's bounding box
    at the origin (one category frame, metres).
    """
    spec = spec_of(category)
    ss = _category_seed(seed, category)
    param_rng, sample_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    canon_mesh = generate_mesh(category, canonical_params(category), config.voxel_size)
    offset = -canon_mesh.bounds.mean(axis=0)
    canon_mesh.apply_translation(offset)

    def save(mesh, rel: str, name: str) -> FileEntry:
        save_mesh(root / rel, mesh.vertices, mesh.faces)
        if progress:
            progress(f"{category}/{name}")
        return FileEntry(name, rel, sha256_file(root / rel))

    canonical = save(canon_mesh, f"{category}/canonical/{category}_canonical.ply",
                     f"{category}_canonical")
    params = {"canonical": canonical_params(category)}
    train = []
    for i in range(config.n_train):
        name = f"{category}_train_{i:02d}"
        params[name] = sample_params(category, param_rng)
        mesh = generate_mesh(category, params[name], config.voxel_size, offset)
        train.append(save(mesh, f"{category}/train/{name}.ply", name))
    tests = []
    for i in range(config.n_test):
        name = f"{category}_test_{i:02d}"
        params[name] = sample_params(category, param_rng)
        mesh = generate_mesh(category, params[name], config.voxel_size, offset)
        entry = save(mesh, f"{category}/test/{name}.ply", name)
        points, _ = _sample_surface(mesh, config.eval_points, sample_rng)
        rel = f"{category}/test/{name}_points.ply"
        save_points(root / rel, points)
        tests.append(TestEntry(entry, FileEntry(f"{name}_points", rel, sha256_file(root / rel))))
    write_json_atomic(root / category / "params.json",
                      {"category": category, "description": spec.description, "units": "m",
                       "offset": offset.tolist(), "ranges": spec.ranges, "instances": params})
    # The generator's axis and mirror plane, moved with the category's offset.
    point = (float(offset[0]), float(offset[1]), float(offset[2]))
    symmetry = Symmetry(SYMMETRY_AXES[category], point) if category in SYMMETRY_AXES else None
    mirror = Mirror(MIRROR_NORMALS[category], point) if category in MIRROR_NORMALS else None
    return CategoryEntry(category, canonical, tuple(train), tuple(tests), symmetry=symmetry,
                         mirror=mirror)


def _sample_surface(mesh, count: int, rng: np.random.Generator):
    """Return `count` points sampled uniformly (by area) on the mesh surface, seeded."""
    import trimesh

    return trimesh.sample.sample_surface(mesh, count, seed=int(rng.integers(2 ** 31)))


def dataset_files(root: Path) -> set[str] | None:
    """Return the paths (relative, '/'-separated) of the files make-dataset writes into the
    dataset folder `root` according to its manifest (the manifest, every mesh and point file it
    lists, each category's params.json and contact_sheet.png); None if `root` holds no readable
    regtool dataset manifest."""
    try:
        data = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT \
            or not isinstance(data.get("categories"), dict):
        return None
    files = {"manifest.json"}

    def paths(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("path"), str):
                files.add(node["path"])
            for value in node.values():
                paths(value)
        elif isinstance(node, list):
            for value in node:
                paths(value)

    paths(data["categories"])
    for category in data["categories"]:
        files |= {f"{category}/params.json", f"{category}/contact_sheet.png"}
    return files


def check_dataset_output(out: Path, overwrite: bool = False) -> None:
    """OutputError unless make-dataset may write the folder `out`: it does not exist yet, is
    empty, or holds a dataset regtool wrote and nothing else (`dataset_files`); any other
    folder only with `overwrite`. Never a file, a symbolic link, nor the current folder or one
    above it. Changes nothing."""
    out = Path(out)
    if os.path.lexists(out):
        if out.is_symlink() or not out.is_dir():
            raise OutputError(f"output {out} exists and is not a folder: give a new folder name")
        here = Path.cwd().resolve()
        if out.resolve() == here or out.resolve() in here.parents:
            raise OutputError(f"output {out} is the current folder or holds it: give a folder "
                              f"name below it")
        if not overwrite:
            known = dataset_files(out) or set()
            foreign = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                             if not p.is_dir() and p.relative_to(out).as_posix() not in known)
            if foreign:
                more = f" (and {len(foreign) - 1} more files)" if len(foreign) > 1 else ""
                raise OutputError(f"output {out} holds {foreign[0]}{more}, which regtool did "
                                  f"not write: give a new folder, or --overwrite to replace the "
                                  f"folder with everything in it")
        check_output_dir(out)
    check_output_dir(out.parent)


def make_dataset(out: Path, config: MakeDatasetConfig, seed: int,
                 progress: Progress | None = None, overwrite: bool = False) -> Manifest:
    """Write the procedural dataset to `out` (replaced atomically) and return its manifest.

    An existing `out` is replaced only if it is empty or holds a dataset regtool wrote and
    nothing else, or with `overwrite` (`check_dataset_output`; OutputError before any work
    otherwise). Same `seed` and config -> byte-identical files (and manifest hashes).
    """
    for category in config.categories:
        spec_of(category)  # unknown category -> DatasetError before anything is written
    check_dataset_output(out, overwrite)
    with atomic_dir(Path(out)) as tmp:
        categories = {c: write_category(tmp, c, config, seed, progress)
                      for c in config.categories}
        manifest = Manifest(name="regtool-procedural", units="m", up_axis="z",
                            categories=categories,
                            extra={"generator": {"seed": seed, "voxel_size": config.voxel_size,
                                                 "n_train": config.n_train,
                                                 "n_test": config.n_test,
                                                 "eval_points": config.eval_points}})
        write_json_atomic(tmp / "manifest.json", manifest_to_dict(manifest))
        if config.contact_sheet:
            from regtool.data.contact_sheet import write_contact_sheets

            write_contact_sheets(tmp, manifest, config.contact_sheet_size, progress)
    return manifest


__all__ = ["make_dataset", "write_category", "FORMAT", "VERSION"]
