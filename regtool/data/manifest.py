"""Dataset layout and manifests (DeepCPD-like).

Layout of a dataset folder (paths are recorded in the manifest, these are the defaults)::

    DIR/manifest.json
    DIR/<category>/canonical/<category>_canonical.ply     the canonical mesh
    DIR/<category>/train/<name>.ply                       training meshes
    DIR/<category>/test/<name>.ply                        test meshes
    DIR/<category>/test/<name>_points.ply                 evaluation point set of a test mesh

Manifest (JSON)::

    {"format": "regtool-dataset", "version": 1, "name": "...", "units": "m", "up_axis": "z",
     "categories": {"bottle": {
        "canonical": {"name": "...", "path": "bottle/canonical/...", "sha256": "..."},
        "train": [{"name": "...", "path": "...", "sha256": "..."}, ...],
        "test": [{"name": "...", "path": "...", "sha256": "...",
                  "eval_points": {"path": "...", "sha256": "..."}}, ...]}}}

`sha256: null` means "not pinned": the file must exist and load, its bytes are not checked
(used by templates such as `data_manifests/deepcpd.json`).

Optional fields (written by `regtool import-dataset`; manifests without them stay valid):

* ``categories.<c>.offset``: ``[x, y, z]`` in the manifest's units, the translation that was
  added to the source meshes and point sets to put the canonical's bounding-box centre at the
  origin (file coordinates = source coordinates + offset).
* ``categories.<c>.symmetry``: ``{"axis": [x, y, z], "point": [x, y, z]}``, a rotational
  symmetry axis of the category (object frame: direction, and a point on it in the manifest's
  units, default the origin): no image shows a rotation about it, so pose errors count only
  the axis tilt. The procedural bottle and spray declare it; `import-dataset` leaves it to the
  user (add it to the manifest by hand).
* ``categories.<c>.mirror``: ``{"normal": [x, y, z], "point": [x, y, z]}``, a mirror plane of
  the category (object frame: its normal, and a point on it in the manifest's units, default
  the origin). The residual refinement of a category without an axis keeps its results mirror
  symmetric about it, so one view reshapes the hidden side too. The procedural drill and spray
  declare it (the plane y = 0 of their generator); `import-dataset` leaves it to the user.
* ``categories.<c>.test[i].points_source``: ``"file"`` (the evaluation points were given with
  the meshes) or ``"sampled"`` (drawn uniformly on the test mesh's surface).
* Any other key of a category (e.g. ``repaired``: {mesh name: [repair steps]}, ``sources``:
  {mesh name: source file}) is kept as it is in `CategoryEntry.extra`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from regtool.errors import DatasetError
from regtool.io import read_json, sha256_file
from regtool.units import UNITS_TO_METRES

FORMAT = "regtool-dataset"
VERSION = 1
POINTS_SOURCES = ("file", "sampled")


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset: its name, path relative to the dataset root, and sha256 (or None)."""

    name: str
    path: str
    sha256: str | None


@dataclass(frozen=True)
class TestEntry:
    """A test instance: its mesh and its evaluation point set; `points_source` ("file" or
    "sampled", see the module docstring) or None when the manifest does not say."""

    mesh: FileEntry
    eval_points: FileEntry
    points_source: str | None = None


@dataclass(frozen=True)
class CategoryEntry:
    """A category: canonical, training and test files; `offset` (x, y, z) in the dataset's
    units or None, and the category's other optional keys in `extra` (module docstring)."""

    name: str
    canonical: FileEntry
    train: tuple[FileEntry, ...]
    test: tuple[TestEntry, ...]
    offset: tuple[float, float, float] | None = None
    extra: dict = field(default_factory=dict)
    symmetry: "Symmetry | None" = None
    mirror: "Mirror | None" = None


@dataclass(frozen=True)
class Symmetry:
    """A rotational symmetry axis of a category: unit direction `axis` (3,) and a `point` (3,)
    on it, object frame, the dataset's units."""

    axis: tuple[float, float, float]
    point: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        return {"axis": list(self.axis), "point": list(self.point)}


@dataclass(frozen=True)
class Mirror:
    """A mirror plane of a category: unit `normal` (3,) and a `point` (3,) on it, object frame,
    the dataset's units."""

    normal: tuple[float, float, float]
    point: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        return {"normal": list(self.normal), "point": list(self.point)}


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest. `units` is the length unit of every mesh and point file."""

    name: str
    units: str
    up_axis: str
    categories: dict[str, CategoryEntry]
    extra: dict

    def category(self, name: str) -> CategoryEntry:
        """Return the category `name`; DatasetError listing the available ones otherwise."""
        if name not in self.categories:
            raise DatasetError(f"category '{name}' is not in the dataset "
                               f"(available: {', '.join(self.categories) or 'none'})")
        return self.categories[name]


def _file_entry(data, where: str) -> FileEntry:
    if not isinstance(data, dict):
        raise DatasetError(f"manifest: {where} must be an object")
    path = data.get("path")
    if not isinstance(path, str) or not path:
        raise DatasetError(f"manifest: {where}.path missing or not a string")
    if Path(path).is_absolute() or ".." in Path(path).parts:
        raise DatasetError(f"manifest: {where}.path must be relative to the dataset: {path}")
    sha = data.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise DatasetError(f"manifest: {where}.sha256 must be 64 hex digits or null")
    name = data.get("name") or Path(path).stem
    return FileEntry(str(name), path, sha)


_CATEGORY_KEYS = ("canonical", "train", "test", "offset", "symmetry", "mirror")


def _offset(value, where: str) -> tuple[float, float, float] | None:
    """Return the optional category offset as 3 floats; DatasetError unless None or a list of 3
    finite numbers."""
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
            or not all(math.isfinite(x) for x in value)):
        raise DatasetError(f"{where} must be a list of 3 finite numbers")
    return (float(value[0]), float(value[1]), float(value[2]))


def parse_symmetry(value, where: str) -> Symmetry | None:
    """Return the optional category symmetry; DatasetError unless None or an object with a
    non-zero 3-vector `axis` and an optional 3-vector `point`."""
    return None if value is None else Symmetry(*_direction_and_point(value, "axis", where))


def parse_mirror(value, where: str) -> Mirror | None:
    """Return the optional category mirror plane; DatasetError unless None or an object with a
    non-zero 3-vector `normal` and an optional 3-vector `point`."""
    return None if value is None else Mirror(*_direction_and_point(value, "normal", where))


def _direction_and_point(value, key: str, where: str
                         ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Return (the unit vector `value[key]`, `value["point"]` or the origin); DatasetError unless
    `value` is an object with exactly these keys, a non-zero 3-vector and a 3-vector."""
    if not isinstance(value, dict) or set(value) - {key, "point"}:
        raise DatasetError(f"{where} must be an object with '{key}' and optionally 'point'")
    vector = _offset(value.get(key), f"{where}.{key}")
    if vector is None or math.hypot(*vector) == 0:
        raise DatasetError(f"{where}.{key} must be a non-zero list of 3 numbers")
    norm = math.hypot(*vector)
    point = _offset(value.get("point"), f"{where}.point") or (0.0, 0.0, 0.0)
    return (vector[0] / norm, vector[1] / norm, vector[2] / norm), point


def parse_manifest(data: dict, source: str = "manifest") -> Manifest:
    """Return the Manifest in `data`; DatasetError naming the first malformed field."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{source}: not a regtool dataset manifest (format != '{FORMAT}')")
    if data.get("version") != VERSION:
        raise DatasetError(f"{source}: unsupported manifest version {data.get('version')!r}")
    units = data.get("units", "m")
    if not isinstance(units, str) or units not in UNITS_TO_METRES:
        raise DatasetError(f"{source}: units must be one of {', '.join(UNITS_TO_METRES)}")
    cats = data.get("categories")
    if not isinstance(cats, dict) or not cats:
        raise DatasetError(f"{source}: 'categories' must be a non-empty object")
    categories = {}
    for cname, c in cats.items():
        if not isinstance(c, dict):
            raise DatasetError(f"{source}: categories.{cname} must be an object")
        train = c.get("train")
        test = c.get("test", [])
        if not isinstance(train, list) or not isinstance(test, list):
            raise DatasetError(f"{source}: categories.{cname}.train/test must be lists")
        tests = []
        for i, t in enumerate(test):
            where = f"categories.{cname}.test[{i}]"
            mesh = _file_entry(t, where)
            if not isinstance(t.get("eval_points"), dict):
                raise DatasetError(f"{source}: {where}.eval_points missing")
            points_source = t.get("points_source")
            if points_source is not None and points_source not in POINTS_SOURCES:
                raise DatasetError(f"{source}: {where}.points_source must be one of "
                                   f"{', '.join(POINTS_SOURCES)}")
            tests.append(TestEntry(mesh, _file_entry(t["eval_points"], f"{where}.eval_points"),
                                   points_source))
        categories[cname] = CategoryEntry(
            name=cname,
            canonical=_file_entry(c.get("canonical"), f"categories.{cname}.canonical"),
            train=tuple(_file_entry(e, f"categories.{cname}.train[{i}]")
                        for i, e in enumerate(train)),
            test=tuple(tests),
            offset=_offset(c.get("offset"), f"{source}: categories.{cname}.offset"),
            symmetry=parse_symmetry(c.get("symmetry"), f"{source}: categories.{cname}.symmetry"),
            mirror=parse_mirror(c.get("mirror"), f"{source}: categories.{cname}.mirror"),
            extra={k: v for k, v in c.items() if k not in _CATEGORY_KEYS})
    extra = {k: v for k, v in data.items()
             if k not in ("format", "version", "name", "units", "up_axis", "categories")}
    return Manifest(str(data.get("name", "")), units, str(data.get("up_axis", "z")), categories,
                    extra)


def manifest_to_dict(m: Manifest) -> dict:
    """Return the JSON form of a manifest."""
    def fe(e: FileEntry) -> dict:
        return {"name": e.name, "path": e.path, "sha256": e.sha256}

    def test(t: TestEntry) -> dict:
        source = {} if t.points_source is None else {"points_source": t.points_source}
        return {**fe(t.mesh), "eval_points": fe(t.eval_points), **source}

    def category(c: CategoryEntry) -> dict:
        offset = {} if c.offset is None else {"offset": list(c.offset)}
        symmetry = {} if c.symmetry is None else {"symmetry": c.symmetry.to_dict()}
        mirror = {} if c.mirror is None else {"mirror": c.mirror.to_dict()}
        return {"canonical": fe(c.canonical), "train": [fe(e) for e in c.train],
                "test": [test(t) for t in c.test], **offset, **symmetry, **mirror, **c.extra}

    return {"format": FORMAT, "version": VERSION, "name": m.name, "units": m.units,
            "up_axis": m.up_axis, **m.extra,
            "categories": {c.name: category(c) for c in m.categories.values()}}


def read_manifest(path: Path) -> Manifest:
    """Return the manifest at `path` (a file, or a dataset folder holding manifest.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    return parse_manifest(read_json(path, "dataset manifest", DatasetError), str(path))


def verification_problems(root: Path, manifest: Manifest, check_hashes: bool = True,
                          categories: list[str] | None = None) -> list[str]:
    """Return every problem of the dataset at `root` against `manifest` (missing files, hash
    mismatches, categories without training or test data); empty when the dataset is valid."""
    root = Path(root)
    problems: list[str] = []
    names = categories if categories is not None else list(manifest.categories)
    for cname in names:
        if cname not in manifest.categories:
            problems.append(f"category '{cname}' is not in the manifest")
            continue
        c = manifest.categories[cname]
        if len(c.train) < 2:
            problems.append(f"{cname}: needs at least 2 training meshes, manifest lists "
                            f"{len(c.train)}")
        entries = [c.canonical, *c.train] + [e for t in c.test for e in (t.mesh, t.eval_points)]
        for e in entries:
            f = root / e.path
            if not f.is_file():
                problems.append(f"{cname}: missing file {e.path}")
            elif check_hashes and e.sha256 is not None and sha256_file(f) != e.sha256:
                problems.append(f"{cname}: sha256 mismatch for {e.path}")
    return problems


def verify_dataset(root: Path, manifest_path: Path | None = None, check_hashes: bool = True,
                   categories: list[str] | None = None) -> Manifest:
    """Return the manifest of the dataset at `root` after checking every file it lists;
    DatasetError listing what is missing or wrong (first 5 problems, with a count)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    manifest = read_manifest(manifest_path or root)
    problems = verification_problems(root, manifest, check_hashes, categories)
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DatasetError(f"dataset {root} does not match its manifest: "
                           + "; ".join(problems[:5]) + more)
    return manifest
