"""Configuration: one frozen dataclass per command, loaded from TOML, overridden by CLI flags.

The dataclass defaults are the paper's defaults, with the U-Net and the image size sized for a
2-core CPU (the `cpu` profile), and are mirrored in `configs/default.toml` (a test keeps the two
equal). The `gpu` profile (`regtool/profiles/gpu.toml`: the paper-sized U-Net at 320x240) is
layered on top by `--profile gpu`, or by `--device cuda` when no profile is named. Loading
validates every key: unknown keys, wrong types and out-of-range values raise `ConfigError`
naming the key, e.g. ``register.iterations``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from regtool.errors import ConfigError


def _f(default: Any, lo: float | None = None, hi: float | None = None,
       choices: tuple | None = None, doc: str = "", unit: str = "") -> Any:
    """A dataclass field with a validation range (inclusive) or a set of allowed values, and
    its documentation: `doc` (what it does) and `unit` (docs/config.md is made from these)."""
    meta = {"min": lo, "max": hi, "choices": choices, "doc": doc, "unit": unit}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


CATEGORIES = ("bottle", "camera", "drill", "spray")


@dataclass(frozen=True)
class MakeDatasetConfig:
    """`regtool make-dataset`: the procedural category generator."""

    categories: tuple[str, ...] = _f(CATEGORIES, choices=CATEGORIES,
                                     doc="procedural categories to generate")
    n_train: int = _f(10, 2, 1000, doc="training meshes per category")
    n_test: int = _f(2, 1, 1000, doc="test meshes per category")
    eval_points: int = _f(2000, 10, 1_000_000,
                          doc="surface points of each test mesh's evaluation point set")
    voxel_size: float = _f(0.003, 0.0005, 0.02, unit="m", doc="marching-cubes grid step")
    contact_sheet: bool = _f(True, doc="write <category>/contact_sheet.png")
    contact_sheet_size: int = _f(160, 32, 1024, unit="px", doc="tile size of the contact sheet")


@dataclass(frozen=True)
class ShapeSpaceConfig:
    """`regtool build-shapespace`: non-rigid CPD (Myronenko & Song 2010) + PCA.

    beta and lambda_ act on point sets normalised to zero mean and unit RMS radius, so the
    same values serve objects in metres or millimetres.
    """

    latent_dim: int = _f(5, 1, 64, doc="latent dimensions (clamped to training meshes - 1)")
    template_points: int = _f(1500, 50, 100_000,
                              doc="CPD template points sampled on the canonical")
    target_points: int = _f(1500, 50, 100_000,
                            doc="CPD target points sampled on each training mesh")
    beta: float = _f(2.0, 1e-3, 100.0, unit="RMS radii",
                     doc="width of CPD's Gaussian kernel (normalised point sets)")
    lambda_: float = _f(2.0, 1e-6, 1e6, doc="CPD's coherence (smoothness) weight")
    w: float = _f(0.0, 0.0, 0.99, doc="CPD's outlier weight (uniform-noise share)")
    tolerance: float = _f(1e-5, 0.0, 1.0, unit="RMS radii^2", doc="CPD stops when its "
                          "variance sigma^2 changes by at most this (normalised point sets)")
    max_iterations: int = _f(150, 1, 100_000, doc="CPD's iteration limit")
    lowrank_threshold: int = _f(4000, 10, 10_000_000,
                                doc="template points from which CPD uses a low-rank kernel")
    lowrank_rank: int = _f(300, 2, 100_000, doc="rank of the low-rank kernel")
    basis: str = _f("displacement", choices=("displacement", "weights"),
                    doc="PCA over displacement fields at the canonical's vertices (DESIGN.md) "
                    "or over CPD's kernel weights")
    report_points: int = _f(2000, 10, 1_000_000,
                            doc="surface points per instance for the report's distances")

    def cpd_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of `shapespace.cpd.nonrigid_cpd` this config sets."""
        return dict(beta=self.beta, lambda_=self.lambda_, w=self.w, tolerance=self.tolerance,
                    max_iterations=self.max_iterations,
                    lowrank_threshold=self.lowrank_threshold, lowrank_rank=self.lowrank_rank)


@dataclass(frozen=True)
class RenderConfig:
    """The observing camera of dataset rendering, training and evaluation, and the shading and
    backward of the differentiable renderer (register, evaluate). Image sizes are the U-Net's
    (`unet.image_width`, `unet.image_height`): evaluate renders its observations at the size the
    U-Net was trained at, register takes the image's own size."""

    fov_y_deg: float = _f(40.0, 1.0, 170.0, unit="deg",
                          doc="vertical field of view of the training and evaluation camera")
    distance: float = _f(0.6, 0.01, 100.0, unit="m",
                         doc="working distance from the camera to the object origin")
    silhouette_dilation: int = _f(2, 0, 32, unit="px", doc="the differentiable renderer's "
                                  "band outside the silhouette that takes the nearest surface "
                                  "point, so edges move")
    light_direction: tuple[float, ...] = _f((0.3, 0.5, 1.0), -1e3, 1e3, doc="direction the "
                                            "differentiable renderer's light travels (OpenCV "
                                            "camera frame: x right, y down, z forward)")
    albedo: tuple[float, ...] = _f((0.7, 0.7, 0.72), 0.0, 1.0,
                                   doc="RGB albedo of the rendered canonical")
    ambient: float = _f(0.3, 0.0, 1.0, doc="ambient share of the rendered shading")
    diffuse: float = _f(0.7, 0.0, 1.0, doc="diffuse (Lambert) share of the rendered shading")
    occlusion_tolerance: float = _f(0.01, 0.0, 0.99, unit="fraction of depth",
                                    doc="relative depth step above which a neighbouring pixel "
                                    "counts as a closer surface (no gradient at that pixel)")

    def __post_init__(self) -> None:
        if len(self.light_direction) != 3 or not any(self.light_direction):
            raise ConfigError(f"config key 'render.light_direction' must be a non-zero 3-vector, "
                              f"got {list(self.light_direction)}")
        if len(self.albedo) != 3:
            raise ConfigError(f"config key 'render.albedo' must be 3 numbers (RGB), "
                              f"got {list(self.albedo)}")


@dataclass(frozen=True)
class UNetConfig:
    """`regtool train-unet`: architecture and training schedule."""

    base_channels: int = _f(8, 2, 256, doc="channels of the first U-Net level (doubling per "
                            "level)")
    depth: int = _f(4, 1, 7, doc="U-Net levels (2x2 max-pools; depth 4: a receptive field "
                     "of about 200 px)")
    feature_channels: int = _f(16, 1, 1024, doc="channels of the feature layer register "
                               "compares in (the paper's network, gpu profile: 64)")
    image_width: int = _f(160, 16, 4096, unit="px", doc="training view width")
    image_height: int = _f(120, 16, 4096, unit="px", doc="training view height")
    steps: int = _f(2000, 1, 10_000_000, doc="optimiser steps")
    batch_size: int = _f(8, 1, 4096, doc="views per step")
    learning_rate: float = _f(2e-3, 1e-8, 10.0, doc="AdamW's peak learning rate (linear "
                              "warm-up over 5 % of the steps, then cosine decay to 2 %)")
    weight_decay: float = _f(1e-4, 0.0, 1.0, doc="AdamW's weight decay")
    val_views: int = _f(32, 1, 100_000, doc="validation views (and views of the test meshes)")
    val_every: int = _f(100, 1, 10_000_000, unit="steps", doc="validation interval")
    checkpoint_every: int = _f(100, 1, 10_000_000, unit="steps", doc="checkpoint interval")
    render_workers: int = _f(1, 0, 64, doc="processes rendering training views (0: render "
                             "in the training process)")
    distance_jitter: float = _f(0.2, 0.0, 0.9, unit="fraction",
                                doc="relative jitter of the working distance of training views")
    train_threads: int = _f(0, 0, 256, doc="torch threads; 0: cores - max(1, render_workers)")
    clutter: float = _f(0.5, 0.0, 1.0, unit="probability", doc="training views with a "
                        "structured background: a photo crop (built-in training photos and "
                        "--backgrounds), dead leaves or textured shapes (0: flat, gradient, "
                        "noise as before)")
    distractors: float = _f(0.2, 0.0, 1.0, unit="probability", doc="training views with 1-2 "
                            "meshes of the dataset's other categories behind / in front of the "
                            "object")
    occluders: float = _f(0.2, 0.0, 1.0, unit="probability", doc="training views with a "
                          "textured occluder over 5-40 % of the object")
    photometric: float = _f(0.3, 0.0, 1.0, unit="probability", doc="training views with "
                            "colour jitter, blur and sensor noise")
    supersample: float = _f(0.0, 0.0, 1.0, unit="probability", doc="training views whose "
                            "object is rendered at 2-3x the size and area-averaged: the softer "
                            "edges of a larger image brought to the network's scale (off: "
                            "docs/photos.md, session 10)")
    builtin_photos: bool = _f(True, doc="structured backgrounds include scikit-image's bundled "
                              "training photos (render.clutter.TRAIN_PHOTOS; the held-back ones "
                              "are never trained on)")


@dataclass(frozen=True)
class CorrespondenceConfig:
    """`regtool train-correspondence`: the correspondence-field network and its training pairs."""

    base_channels: int = _f(12, 2, 256, doc="channels of the first network level (doubling "
                            "per level)")
    depth: int = _f(4, 1, 7, doc="network levels (2x2 max-pools)")
    downsample: int = _f(2, 1, 8, doc="the network works at 1/this of the image size "
                         "(outputs upsampled to full-resolution pixels)")
    image_width: int = _f(160, 16, 4096, unit="px", doc="training view width (use the "
                          "U-Net's: registration observes at its size)")
    image_height: int = _f(120, 16, 4096, unit="px", doc="training view height")
    steps: int = _f(5000, 1, 10_000_000, doc="optimiser steps")
    batch_size: int = _f(8, 1, 4096, doc="pairs per step")
    pairs_per_view: int = _f(4, 1, 4096, doc="training pairs (estimates) per rendered "
                             "observation: the photo-like rendering is the costly part")
    learning_rate: float = _f(2e-3, 1e-8, 10.0, doc="AdamW's peak learning rate (warm-up, "
                              "cosine decay, as train-unet)")
    val_views: int = _f(32, 1, 100_000, doc="validation pairs (and pairs of the test meshes)")
    val_every: int = _f(100, 1, 10_000_000, unit="steps", doc="validation interval")
    checkpoint_every: int = _f(100, 1, 10_000_000, unit="steps", doc="checkpoint interval")
    max_rotation_deg: float = _f(30.0, 0.0, 180.0, unit="deg",
                                 doc="pose perturbation of the estimate: rotation up to this")
    max_translation_m: float = _f(0.08, 0.0, 10.0, unit="m", doc="pose perturbation: x/y "
                                  "translation up to this (z: a quarter)")
    code_noise: float = _f(0.5, 0.0, 10.0, unit="latent std", doc="code perturbation of the "
                           "estimate (when it does not start from the canonical's code)")
    distance_jitter: float = _f(0.2, 0.0, 0.9, unit="fraction",
                                doc="relative jitter of the working distance of the views")
    threads: int = _f(1, 0, 256, doc="torch threads; 0: one per core. On a busy 2-core CPU "
                      "two threads made a step 8x slower than one (16 s against 2 s measured)")


@dataclass(frozen=True)
class RegisterConfig:
    """`regtool register`: the render-and-compare optimisation (StilllebenDR, Sec. 3.3)."""

    iterations: int = _f(30, 1, 100_000, doc="iterations per descent (each scores N + 1 "
                         "states: the last evaluation scores the final state)")
    learning_rate: float = _f(0.1, 1e-8, 1e4, unit="latent std",
                              doc="length of the first shape step")
    pose_learning_rate: float = _f(0.01, 1e-8, 1e4, unit="rad / object radii",
                                   doc="length of the first pose step; small because the pose "
                                   "loss is rugged (docs/experiments.md)")
    momentum: float = _f(0.9, 0.0, 1.0, doc="SGD momentum")
    lr_decay: float = _f(0.95, 0.0, 1.0, doc="learning-rate factor per step")
    pose_every: int = _f(3, 1, 1000, unit="iterations", doc="joint mode: one pose step per "
                         "this many shape steps")
    pose_warmup: int = _f(10, 0, 100_000, unit="iterations",
                          doc="joint mode: pose-only iterations before the joint ones")
    pose_search_deg: float = _f(10.0, 0.0, 90.0, unit="deg", doc="joint mode: step of the "
                                "coarse rotation grid tried before the warm-up; 0: none, "
                                "which measures better for starts within about 15 deg "
                                "(docs/correspondence.md, session 17)")
    latent_bound: float = _f(3.0, 0.1, 100.0, unit="latent std",
                             doc="|z_j| / sqrt(explained variance_j) at most")
    plateau_patience: int = _f(15, 1, 100_000, unit="iterations",
                               doc="stop after this many iterations without improvement")
    plateau_tolerance: float = _f(1e-4, 0.0, 1.0, unit="fraction",
                                  doc="relative loss decrease that counts as improvement")
    divergence_factor: float = _f(10.0, 1.0, 1e6, doc="a descent stops as diverged when the "
                                  "loss exceeds this many times its first value")
    loss: str = _f("features+mask", choices=("features", "rgb", "mask", "features+mask"),
                   doc="image comparison: the paper's aggregated features, plus the U-Net's "
                   "object probability (default), the probability alone, or RGB")
    start: str = _f("search", choices=("canonical", "mean", "search"),
                    doc="canonical: one descent from the canonical's code (the paper); mean: "
                    "from z = 0; search: a second descent from the best-fitting training "
                    "code, keeping the better")
    joint: bool = _f(False, doc="also optimise the pose (register --joint)")
    pose_axes: tuple[str, ...] = _f(("rx", "ry", "rz", "tx", "ty"),
                                    choices=("rx", "ry", "rz", "tx", "ty", "tz"),
                                    doc="joint mode: pose parameters optimised (rotations "
                                    "about and translations along the camera axes)")
    mask_dilation: int = _f(8, 0, 256, unit="px",
                            doc="pixels added around the object region the loss is taken in")
    weighting: str = _f("region", choices=("region", "probability"),
                        doc="pixels the comparison weighs: 'region' every pixel of the "
                        "dilated object region alike, 'probability' (instead of the region) "
                        "each pixel by the larger of the observation's object probability "
                        "(dilated by mask_dilation) and the rendering's (loss features+mask "
                        "or mask)")
    supersample: int = _f(3, 1, 8, doc="render at N x the image size and average down "
                          "(anti-aliasing)")
    centre_start: bool = _f(True, doc="joint mode: first centre the silhouette on the object "
                            "region")
    gif: bool = _f(True, doc="write optimisation.gif")
    threads: int = _f(1, 0, 256, doc="torch CPU threads of `regtool register`; 0: torch's "
                      "default (one per core). At 160x120 a second thread gains little, and "
                      "two threads on a busy 2-core CPU stall each other (96 s against 8 s "
                      "measured); evaluate's workers divide the cores among themselves")
    refine: str = _f("none", choices=("none", "residual"),
                     doc="after the latent (and pose) descent: none, or a residual "
                     "displacement field v = V(z) + G W beyond the latent space, G a Gaussian "
                     "kernel on the canonical's vertices (docs/refinement.md)")
    refine_beta: float = _f(0.2, 0.01, 100.0, unit="RMS radii", doc="refinement: width of "
                            "the residual's Gaussian kernel (canonical normalised to unit RMS "
                            "radius, as CPD's beta)")
    refine_lambda: float = _f(10.0, 0.0, 1e6, doc="refinement: weight of the smoothness "
                              "tr(W^T G W) (in RMS radii^2) against the image loss divided by "
                              "its value at the latent result")
    refine_mahalanobis: float = _f(0.05, 0.0, 1e6, doc="refinement: weight of the squared "
                                   "Mahalanobis distance under the PCA of the total field's "
                                   "latent-space part (a prior on the code); 0: off")
    refine_iterations: int = _f(30, 1, 100_000, doc="refinement: iterations (each renders "
                                "every view once)")
    refine_learning_rate: float = _f(0.05, 1e-8, 10.0, unit="RMS radii",
                                     doc="refinement: length of the first step of the "
                                     "residual's kernel weights; it bounds every vertex's move "
                                     "in that step")
    refine_rank: int = _f(64, 1, 10_000, doc="refinement: rank of the low-rank Gaussian "
                          "kernel (Nystroem on farthest points, as CPD's)")
    refine_symmetric: bool = _f(True, doc="refinement: where the shape space has a rotational "
                                "symmetry axis (the dataset manifest's, kept by "
                                "build-shapespace) the residual stays symmetric about it: "
                                "radial, axial and swirl displacements as smooth functions of "
                                "height and radius; else, where it has a mirror plane, mirror "
                                "symmetric about that; so what one view shows moves the far "
                                "side too; false: a free 3D field")
    backward: str = _f("analytic", choices=("analytic", "learned"),
                       doc="joint mode's pose: analytic (image gradients, StilllebenDR) or "
                       "learned (a correspondence field from `train-correspondence` drives "
                       "the pose, then the image features the code; needs --correspondence)")
    field_iterations: int = _f(15, 1, 10_000, doc="learned backward: Gauss-Newton pose steps "
                               "from the correspondence field, at most")
    field_stop_px: float = _f(1.0, 0.0, 1000.0, unit="px", doc="learned backward: stop once "
                              "the field's confidence-weighted mean length is below this")
    field_code: bool = _f(True, doc="learned backward: the field also moves the latent code "
                          "(else only the pose; the code follows from the image features)")
    field_refine: bool = _f(True, doc="learned backward: after the field stage, the analytic "
                            "joint descent (pose and code, without centring and rotation grid); "
                            "false: the known-pose descent of the code (docs/correspondence.md)")
    candidates: tuple[str, ...] = _f((), choices=("grid", "no-grid", "learned"),
                                     doc="joint mode: instead of the one registration "
                                     "configured, one per named variant from the same start, "
                                     "keeping the lowest final loss: grid (analytic backward, "
                                     "rotation grid of pose_search_deg, 10 if that is 0), "
                                     "no-grid (analytic, no grid), learned (the learned "
                                     "backward; needs --correspondence). All three: 18-29 % less "
                                     "rotation error than the default at about 2x its time "
                                     "(docs/correspondence.md, session 19); empty: off")


@dataclass(frozen=True)
class EvaluateConfig:
    """`regtool evaluate`: the paper's Table 1 protocol (Sec. 4.2, 4.3)."""

    pose_noise_xy: float = _f(0.05, 0.0, 10.0, unit="m",
                              doc="pose noise: x/y translation uniform in [-x, x]")
    pose_noise_deg: float = _f(15.0, 0.0, 180.0, unit="deg",
                               doc="pose noise: rotation uniform in [-a, a] about each axis")
    noise_draws: int = _f(3, 0, 1000, doc="pose-noise draws per test instance; 0: known "
                          "pose only")
    views: int = _f(1, 1, 64, doc="observations of each test instance registered jointly: "
                    "the first view and N - 1 more around it (seeded azimuths and elevations, "
                    "known relative poses; under pose noise one shared object pose error); "
                    "N > 1 adds the N-view columns to the 1-view ones")
    elevation_deg: tuple[float, ...] = _f((10.0, 40.0), -90.0, 90.0, unit="deg",
                                          doc="[low, high]: the observing camera's elevation "
                                          "above the object's xy-plane, uniform in the range")
    fit_iterations: int = _f(50, 1, 100_000, doc="iterations of the 3D baselines' latent fit "
                             "to the test points (shapespace.fit.fit_points)")
    workers: int = _f(0, 0, 256, doc="parallel processes; 0: one per available core")
    backgrounds: str = _f("", doc="observations composited onto crops of photos: '' the "
                          "plain rendered backgrounds, 'builtin' the held-back built-in photos "
                          "(astronaut, chelsea, coffee, rocket), else a folder of images; one "
                          "row per test instance and photo")
    occlusion: float = _f(0.0, 0.0, 0.9, unit="fraction", doc="share of the object's pixels a "
                          "random textured occluder covers in the observations")

    def __post_init__(self) -> None:
        if len(self.elevation_deg) != 2 or self.elevation_deg[0] > self.elevation_deg[1]:
            raise ConfigError(f"config key 'evaluate.elevation_deg' must be [low, high] with "
                              f"low <= high, got {list(self.elevation_deg)}")


@dataclass(frozen=True)
class Config:
    """All sections; `load_config` fills it from TOML and flags."""

    make_dataset: MakeDatasetConfig = field(default_factory=MakeDatasetConfig)
    shapespace: ShapeSpaceConfig = field(default_factory=ShapeSpaceConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    correspondence: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
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


PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


def profile_names() -> tuple[str, ...]:
    """Return the names of the built-in profiles (`regtool/profiles/<name>.toml`)."""
    return tuple(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))


def read_profile(name: str) -> dict[str, Any]:
    """Return the TOML-layout dict of the built-in profile `name`; ConfigError if unknown."""
    if name not in profile_names():
        raise ConfigError(f"unknown profile '{name}' (use one of {', '.join(profile_names())})")
    return read_toml(PROFILES_DIR / f"{name}.toml")


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None,
                profile: str | None = None) -> Config:
    """Return the defaults, updated by the built-in `profile` (None: the defaults alone), then
    by the TOML file at `path`, then by `overrides`.

    `overrides` uses the TOML layout, e.g. ``{"register": {"iterations": 10}}``; `None` values
    are dropped so unset CLI flags do not override the file.
    """
    data: dict[str, Any] = read_profile(profile) if profile is not None else {}
    if path is not None:
        data = merge(data, read_toml(path))
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


SECTION_COMMANDS = {"make_dataset": "make-dataset", "shapespace": "build-shapespace",
                    "render": "make-dataset, train-unet, register, evaluate",
                    "unet": "train-unet", "correspondence": "train-correspondence",
                    "register": "register, evaluate",
                    "evaluate": "evaluate"}


def config_reference_markdown() -> str:
    """Return docs/config.md: every key of every section with its meaning, unit, default,
    allowed values and the commands that read it, from the dataclass field metadata."""
    hints = get_type_hints(Config)
    lines = ["# Configuration reference", "",
             "Generated from `regtool/config.py` by `python scripts/config_docs.py` (a test "
             "keeps it current). Defaults are the built-in (CPU) profile; "
             "`regtool/profiles/gpu.toml` overrides the U-Net and image size. A config file "
             "(`--config FILE`) sets any subset of these keys in TOML tables named like the "
             "sections.", ""]
    for section in dataclasses.fields(Config):
        cls = hints[section.name]
        lines += [f"## [{section.name}]", "", (cls.__doc__ or "").strip().splitlines()[0], "",
                  f"Read by: {SECTION_COMMANDS[section.name]}.", "",
                  "| key | default | unit | allowed | meaning |",
                  "| --- | --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            meta = f.metadata
            default = getattr(cls(), f.name)
            if isinstance(default, tuple):
                default = list(default)
            allowed = (", ".join(map(str, meta["choices"])) if meta.get("choices") else
                       f"{meta['min']} .. {meta['max']}" if meta.get("min") is not None
                       else "")
            lines.append(f"| `{f.name}` | `{json_literal(default)}` | {meta.get('unit', '')} "
                         f"| {allowed} | {meta.get('doc', '')} |")
        lines.append("")
    return "\n".join(lines)


def json_literal(value: Any) -> str:
    """Return `value` as a TOML/JSON literal (true/false, quoted strings, lists)."""
    import json

    return json.dumps(value)

