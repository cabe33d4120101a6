"""The jobs file of `regtool register-batch`: one JSON object per line, one registration each.

Keys of a line (paths relative to the jobs file's folder, or absolute)::

    {"id": "frame_000",                      # required; letters, digits, '.', '_', '-'
     "image": "obs/000.png",                 # or "images": [...], one per view
     "camera": "camera.json",                # or "cameras": [...], one or one per image
     "pose": "pose.json",                    # or "poses": [...], one per image
     "mask": "mask/000.png",                 # optional, or "masks": [...]
     "transfer": "points.json",              # optional: named points to map onto the result
     "resize": false,                        # optional: resize images of another size
     "shapespace": "bottle/shapespace.npz",  # optional: default --shapespace
     "unet": "bottle/unet.pt",               # optional: default --unet
     "overrides": {"register": {"iterations": 10, "joint": true}},  # optional config keys
     "track": "video_1"}                     # optional: sequence mode

Jobs sharing a `track` run in the file's order, each starting from the latent code and the
final pose(s) of the last successful job before it in the track (one descent from that code);
only the first job of a track needs poses. Blank lines and lines starting with '#' are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regtool.config import Config, load_config
from regtool.errors import ConfigError, RegtoolError
from regtool.registration.job import JobInputs

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED = {"summary.csv"}
_LISTS = {"image": "images", "camera": "cameras", "pose": "poses", "mask": "masks"}
_KEYS = set(_LISTS) | set(_LISTS.values()) | {"id", "transfer", "resize", "shapespace", "unet",
                                              "overrides", "track"}


@dataclass(frozen=True)
class BatchJob:
    """One line of the jobs file, resolved: absolute paths, the job's own config (the batch
    config with the line's overrides), its track (None: independent)."""

    id: str
    line: int
    inputs: JobInputs
    shapespace: Path
    unet: Path
    config: Config
    track: str | None = None
    overrides: dict[str, Any] | None = None


def read_jobs(path: Path, *, shapespace: Path | None = None, unet: Path | None = None,
              config_path: Path | None = None, profile: str | None = None) -> list[BatchJob]:
    """Return the jobs of the jobs file `path` in file order (format in the module docstring).

    `shapespace`, `unet`: defaults for lines without them; `config_path`, `profile`: the batch's
    config, each line's "overrides" layered on it (`load_config`). ConfigError naming the file
    and line for a missing or unreadable file, a line that is not a JSON object, a missing,
    malformed or repeated id, an unknown key, a wrong type, a bad override, no jobs, or a
    track's first job without poses. Files the paths name are read by the jobs themselves
    (a missing image fails that job alone)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"jobs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read jobs file {path}: {exc}") from exc
    base = path.resolve().parent
    jobs: list[BatchJob] = []
    seen: set[str] = set()
    tracks: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"jobs file {path} line {number}"
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from exc
        job = _job(data, where, number, base, shapespace, unet, config_path, profile)
        if job.id in seen:
            raise ConfigError(f"{where}: job id '{job.id}' is used twice")
        seen.add(job.id)
        if job.track is not None and job.track not in tracks:
            tracks.add(job.track)
            if not job.inputs.poses:
                raise ConfigError(f"{where}: the first job of track '{job.track}' needs "
                                  f"'pose' (later jobs start from the previous one's pose)")
        jobs.append(job)
    if not jobs:
        raise ConfigError(f"jobs file {path} holds no job")
    return jobs


def _paths(data: dict, key: str, where: str, base: Path, required: bool) -> tuple[Path, ...]:
    plural = _LISTS[key]
    if key in data and plural in data:
        raise ConfigError(f"{where}: give '{key}' or '{plural}', not both")
    value = data.get(key, data.get(plural))
    if value is None:
        if required:
            raise ConfigError(f"{where}: missing '{key}'")
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or \
            not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{where}: '{key}' must be a path or a non-empty list of paths")
    return tuple(base / v for v in values)  # an absolute v replaces base


def _path(data: dict, key: str, where: str, base: Path, default: Path | None) -> Path | None:
    value = data.get(key)
    if value is None:
        return Path(default).resolve() if default is not None else None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' must be a path")
    return base / value


def _job(data: Any, where: str, number: int, base: Path, shapespace: Path | None,
         unet: Path | None, config_path: Path | None, profile: str | None) -> BatchJob:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(sorted(_KEYS))})")
    job_id = data.get("id")
    if not isinstance(job_id, str) or not _ID.match(job_id) or job_id in _RESERVED:
        raise ConfigError(f"{where}: 'id' must be a name of letters, digits, '.', '_' or '-' "
                          f"(starting with a letter or digit), got {job_id!r}")
    track = data.get("track")
    if track is not None and (not isinstance(track, str) or not track):
        raise ConfigError(f"{where}: 'track' must be a non-empty string")
    resize = data.get("resize", False)
    if not isinstance(resize, bool):
        raise ConfigError(f"{where}: 'resize' must be true or false")
    inputs = JobInputs(images=_paths(data, "image", where, base, True),
                       cameras=_paths(data, "camera", where, base, True),
                       poses=_paths(data, "pose", where, base, track is None),
                       masks=_paths(data, "mask", where, base, False),
                       transfer=_path(data, "transfer", where, base, None), resize=resize)
    space = _path(data, "shapespace", where, base, shapespace)
    net = _path(data, "unet", where, base, unet)
    for name, value in (("shapespace", space), ("unet", net)):
        if value is None:
            raise ConfigError(f"{where}: no '{name}' (give it on the line or --{name})")
    overrides = data.get("overrides")
    if overrides is not None and (not isinstance(overrides, dict) or not all(
            isinstance(v, dict) for v in overrides.values())):
        raise ConfigError(f"{where}: 'overrides' must map config sections to tables, e.g. "
                          f'{{"register": {{"iterations": 10}}}}')
    try:
        config = load_config(config_path, overrides, profile=profile)
    except RegtoolError as exc:
        raise ConfigError(f"{where}: overrides: {exc}") from exc
    assert space is not None and net is not None
    return BatchJob(job_id, number, inputs, space, net, config, track, overrides)
