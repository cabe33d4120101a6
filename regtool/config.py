"""Configuration: one frozen dataclass per command, loaded from TOML, overridden by CLI flags.

The dataclass defaults are the paper's defaults and are mirrored in `configs/default.toml`
(a test keeps the two equal). Loading validates every key: unknown keys, wrong types and
out-of-range values raise `ConfigError` naming the key, e.g. ``register.iterations``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from regtool.errors import ConfigError


def _rng(lo: float | None = None, hi: float | None = None, choices: tuple | None = None) -> dict:
    return {"min": lo, "max": hi, "choices": choices}


def _f(default: Any, lo: float | None = None, hi: float | None = None,
       choices: tuple | None = None) -> Any:
    """A dataclass field with a validation range (inclusive) or a set of allowed values."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=_rng(lo, hi, choices))
    return field(default=default, metadata=_rng(lo, hi, choices))


CATEGORIES = ("bottle", "camera", "drill", "spray")


@dataclass(frozen=True)
class MakeDatasetConfig:
    """`regtool make-dataset`: the procedural category generator."""

    categories: tuple[str, ...] = _f(CATEGORIES, choices=CATEGORIES)
    n_train: int = _f(10, 2, 1000)
    n_test: int = _f(2, 1, 1000)
    eval_points: int = _f(2000, 10, 1_000_000)
    voxel_size: float = _f(0.003, 0.0005, 0.02)  # marching-cubes grid step, metres
    contact_sheet: bool = _f(True)
    contact_sheet_size: int = _f(160, 32, 1024)  # pixels per tile


@dataclass(frozen=True)
class ShapeSpaceConfig:
    """`regtool build-shapespace`: non-rigid CPD (Myronenko & Song 2010) + PCA.

    beta and lambda_ act on point sets normalised to zero mean and unit RMS radius, so the
    same values serve objects in metres or millimetres.
    """

    latent_dim: int = _f(5, 1, 64)
    template_points: int = _f(1500, 50, 100_000)
    target_points: int = _f(1500, 50, 100_000)
    beta: float = _f(2.0, 1e-3, 100.0)
    lambda_: float = _f(2.0, 1e-6, 1e6)
    w: float = _f(0.0, 0.0, 0.99)
    tolerance: float = _f(1e-5, 0.0, 1.0)
    max_iterations: int = _f(150, 1, 100_000)
    lowrank_threshold: int = _f(4000, 10, 10_000_000)
    lowrank_rank: int = _f(300, 2, 100_000)
    basis: str = _f("displacement", choices=("displacement", "weights"))
    report_points: int = _f(2000, 10, 1_000_000)  # surface points per instance for the report


@dataclass(frozen=True)
class RenderConfig:
    """Image size and the observing camera used by dataset rendering, training and evaluation."""

    width: int = _f(320, 8, 8192)
    height: int = _f(240, 8, 8192)
    fov_y_deg: float = _f(40.0, 1.0, 170.0)
    distance: float = _f(0.6, 0.01, 100.0)  # working distance camera -> object origin, metres
    image_type: str = _f("rgb", choices=("rgb", "normals", "mask"))
    silhouette_dilation: int = _f(2, 0, 32)  # pixels


@dataclass(frozen=True)
class UNetConfig:
    """`regtool train-unet`: architecture and training schedule."""

    base_channels: int = _f(16, 2, 256)
    depth: int = _f(4, 1, 7)
    feature_channels: int = _f(64, 1, 1024)
    image_width: int = _f(320, 16, 4096)
    image_height: int = _f(240, 16, 4096)
    steps: int = _f(3000, 1, 10_000_000)
    batch_size: int = _f(8, 1, 4096)
    learning_rate: float = _f(1e-3, 1e-8, 10.0)
    val_views: int = _f(64, 1, 100_000)
    val_every: int = _f(200, 1, 10_000_000)
    checkpoint_every: int = _f(200, 1, 10_000_000)
    render_workers: int = _f(1, 0, 64)
    distance_jitter: float = _f(0.2, 0.0, 0.9)  # relative jitter of the working distance
    train_threads: int = _f(0, 0, 256)  # torch threads; 0: cores - max(1, render_workers)


@dataclass(frozen=True)
class RegisterConfig:
    """`regtool register`: the render-and-compare optimisation (StilllebenDR, Sec. 3.3)."""

    iterations: int = _f(30, 1, 100_000)
    learning_rate: float = _f(0.1, 1e-8, 1e4)
    # Length of the first pose step (radians / object radii). Small: the pose loss is rugged and
    # longer steps drift from a good pose (pose-noise error 3.04 -> 2.86 mm from 0.05 to 0.01).
    pose_learning_rate: float = _f(0.01, 1e-8, 1e4)
    momentum: float = _f(0.9, 0.0, 1.0)
    lr_decay: float = _f(0.95, 0.0, 1.0)
    pose_every: int = _f(3, 1, 1000)
    pose_warmup: int = _f(10, 0, 100_000)  # pose-only iterations before joint updates
    pose_search_deg: float = _f(10.0, 0.0, 90.0)  # coarse rotation grid step; 0: no search
    latent_bound: float = _f(3.0, 0.1, 100.0)  # |z_j| / sqrt(explained variance_j) at most
    plateau_patience: int = _f(15, 1, 100_000)
    plateau_tolerance: float = _f(1e-4, 0.0, 1.0)
    # "features": the paper's comparison; "features+mask" adds the U-Net's object probability.
    loss: str = _f("features+mask", choices=("features", "rgb", "mask", "features+mask"))
    # "canonical": one descent from z_c (the paper); "mean": from z = 0; "search": a second
    # descent from the best-fitting training code, keeping the better (optimise.register).
    start: str = _f("search", choices=("canonical", "mean", "search"))
    joint: bool = _f(False)
    pose_axes: tuple[str, ...] = _f(("rx", "ry", "rz", "tx", "ty"),
                                    choices=("rx", "ry", "rz", "tx", "ty", "tz"))
    mask_dilation: int = _f(8, 0, 256)  # pixels added around the U-Net's object region
    supersample: int = _f(3, 1, 8)  # render at N x the image size, average down (anti-aliasing)
    centre_start: bool = _f(True)  # joint mode: first centre the silhouette on the object region
    gif: bool = _f(True)


@dataclass(frozen=True)
class EvaluateConfig:
    """`regtool evaluate`: the paper's Table 1 protocol (Sec. 4.2, 4.3)."""

    pose_noise_xy: float = _f(0.05, 0.0, 10.0)  # metres, uniform in [-x, x]
    pose_noise_deg: float = _f(15.0, 0.0, 180.0)  # degrees, uniform in [-a, a] about each axis
    noise_draws: int = _f(3, 1, 1000)
    workers: int = _f(0, 0, 256)  # 0: one per available core


@dataclass(frozen=True)
class Config:
    """All sections; `load_config` fills it from TOML and flags."""

    make_dataset: MakeDatasetConfig = field(default_factory=MakeDatasetConfig)
    shapespace: ShapeSpaceConfig = field(default_factory=ShapeSpaceConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def _check_value(key: str, value: Any, hint: Any, meta: dict) -> Any:
    """Return `value` converted to the field's type; raise ConfigError naming `key` otherwise."""
    origin = get_origin(hint)
    if origin is tuple:
        (item_type, *_rest) = get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return tuple(_check_value(key, v, item_type, meta) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be finite, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; "
                          f"got {value!r}")
    if lo is not None and value < lo:
        raise ConfigError(f"config key '{key}' must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"config key '{key}' must be <= {hi}, got {value!r}")
    return value


def _build_section(cls: type, name: str, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{name}.{key}' "
                              f"(known: {', '.join(sorted(fields))})")
        kwargs[key] = _check_value(f"{name}.{key}", value, hints[key], dict(fields[key].metadata))
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Return a validated `Config` from a nested dict (TOML layout: one table per section)."""
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    hints = get_type_hints(Config)
    built = {}
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"unknown config section '{name}' (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{name}' must be a table")
        built[name] = _build_section(hints[name], name, values)
    return Config(**built)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated section by section with `override` (both TOML-layout dicts)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for name, values in override.items():
        if isinstance(values, dict) and isinstance(out.get(name), dict):
            out[name].update(values)
        else:
            out[name] = values
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """Return the parsed TOML file; ConfigError if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Return the defaults, updated by the TOML file at `path`, then by `overrides`.

    `overrides` uses the TOML layout, e.g. ``{"register": {"iterations": 10}}``; `None` values
    are dropped so unset CLI flags do not override the file.
    """
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    if overrides:
        clean = {s: {k: v for k, v in vals.items() if v is not None}
                 for s, vals in overrides.items()}
        data = merge(data, clean)
    return config_from_dict(data)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Return `config` as a JSON/TOML-ready nested dict (tuples become lists)."""
    def conv(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v
    return {f.name: {k: conv(v) for k, v in dataclasses.asdict(getattr(config, f.name)).items()}
            for f in dataclasses.fields(config)}
