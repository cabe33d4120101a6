"""Building a category's shape space from a dataset: sample surfaces, CPD canonical -> each
training instance, PCA over the displacement fields, and the JSON report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtool import __version__
from regtool.config import ShapeSpaceConfig
from regtool.data.manifest import Mirror, Symmetry
from regtool.errors import MeshError
from regtool.geometry.mesh import validate_mesh
from regtool.geometry.sampling import sample_surface
from regtool.shapespace.cpd import gaussian_kernel, nonrigid_cpd, to_numpy
from regtool.shapespace.space import ShapeSpace, pca_shape_space

# progress(name, done, total): called after each training instance's CPD fit.
Progress = Callable[[str, int, int], None]

METRIC = ("mean L2 distance from points sampled on the instance's surface to the nearest vertex "
          "of the mesh (the paper's Table 1 metric)")


def mean_distance_to_vertices(points: np.ndarray, vertices: np.ndarray) -> float:
    """Return the mean distance from each point (N, 3) to its nearest vertex (V, 3)."""
    from scipy.spatial import cKDTree

    return float(cKDTree(vertices).query(points)[0].mean())


def shapespace_from_meshes(canonical: tuple[np.ndarray, np.ndarray],
                           train: dict[str, tuple[np.ndarray, np.ndarray]],
                           config: ShapeSpaceConfig, seed: int, device: str | torch.device = "cpu",
                           *, category: str = "category", units: str = "m",
                           input_hashes: dict[str, str] | None = None,
                           sources: dict[str, str] | None = None,
                           progress: Progress | None = None,
                           executor=None,
                           symmetry: Symmetry | None = None, mirror: Mirror | None = None
                           ) -> tuple[ShapeSpace, dict[str, Any]]:
    """Return (ShapeSpace, report) from in-memory meshes given as (vertices (V, 3), faces (F, 3)).

    Seeded sampling (numpy Generator from `seed`): M = template_points on the canonical,
    N = target_points and report_points per training instance. CPD (canonical -> instance) with
    the config's parameters on `device` (float64); PCA over d_i = G(Y, V_c) W_i. The report
    holds explained variance, per-instance CPD residual / latent reconstruction / canonical
    distances (units, see METRIC), timings and parameters, and under "warnings" the training
    meshes whose size differs from the canonical's by more than 3x. MeshError for bad meshes,
    fewer than 2 training instances, or a training mesh more than 10x larger or smaller than the
    canonical (named by `sources`: name -> file, default its name). `executor`: run the CPD
    fits as tasks on it (`regtool.batch.executor`; None: one after the other here).
    `symmetry`, `mirror`: the category's rotational symmetry axis and mirror plane (object
    frame, `units`), kept in the shape space for the registration's residual refinement.
    """
    t_start = time.perf_counter()
    if len(train) < 2:
        raise MeshError(f"a shape space needs at least 2 training instances, got {len(train)}")
    cv, cf = (np.asarray(a) for a in canonical)
    validate_mesh(np.asarray(cv, np.float64), np.asarray(cf, np.int64), "canonical mesh")
    for name, (v, f) in train.items():
        validate_mesh(np.asarray(v, np.float64), np.asarray(f, np.int64), f"training mesh {name}")
    size_warnings = check_sizes(cv, {n: v for n, (v, _) in train.items()}, units, sources)
    cv, cf = np.asarray(cv, np.float64), np.asarray(cf, np.int64)
    rng = np.random.default_rng(seed)
    template = sample_surface(cv, cf, config.template_points, rng)
    cpd_kwargs = config.cpd_kwargs()
    names = list(train)
    eval_points = {}
    tasks = []
    for name in names:  # every draw in the order of one instance after the other
        v, f = (np.asarray(train[name][0], np.float64), np.asarray(train[name][1], np.int64))
        target = sample_surface(v, f, config.target_points, rng)
        eval_points[name] = sample_surface(v, f, config.report_points, rng)
        tasks.append(CpdTask(name, template, target, cv, str(device), cpd_kwargs))
    fits = _fit_all(tasks, executor, progress)
    displacements = [fit.displacement for fit in fits]
    weights = [fit.weights for fit in fits]
    per_instance = [fit.info for fit in fits]
    t_cpd = sum(fit.seconds for fit in fits)
    kernel_at_vertices = None
    if config.basis == "weights":
        kernel_at_vertices = to_numpy(gaussian_kernel(
            torch.as_tensor(cv), torch.as_tensor(template), fits[0].beta))
    t0 = time.perf_counter()
    params = {**cpd_kwargs, "template_points": config.template_points,
              "target_points": config.target_points, "normalisation":
              "template centroid and RMS radius; beta, lambda_, tolerance in normalised units",
              "seed": seed}
    space = pca_shape_space(category=category, units=units, canonical_vertices=cv, faces=cf,
                            template_points=template, displacements=np.stack(displacements),
                            weights=np.stack(weights), kernel_at_vertices=kernel_at_vertices,
                            train_names=names, latent_dim=config.latent_dim,
                            basis_kind=config.basis, cpd_params=params,
                            input_hashes=input_hashes, symmetry=symmetry, mirror=mirror)
    t_pca = time.perf_counter() - t0

    t0 = time.perf_counter()
    recon = space.deform_numpy(space.train_codes)
    for i, name in enumerate(names):
        pts = eval_points[name]
        per_instance[i].update({
            "cpd_residual": mean_distance_to_vertices(pts, cv + displacements[i]),
            "latent_error": mean_distance_to_vertices(pts, recon[i]),
            "canonical_error": mean_distance_to_vertices(pts, cv),
            "code": space.train_codes[i].tolist()})
    t_eval = time.perf_counter() - t0
    mean = {key: float(np.mean([r[key] for r in per_instance]))
            for key in ("cpd_residual", "latent_error", "canonical_error")}
    report = {
        "format": "regtool-shapespace-report", "regtool_version": __version__,
        "category": category, "units": units, "metric": METRIC,
        "latent_dim": space.latent_dim, "latent_dim_requested": config.latent_dim,
        "basis": config.basis, "n_train": len(names), "num_vertices": space.num_vertices,
        "explained_variance": space.explained_variance.tolist(),
        "explained_variance_ratio": space.explained_variance_ratio.tolist(),
        "canonical_code": space.canonical_code.tolist(),
        "instances": per_instance,
        "summary": {f"mean_{k}": v for k, v in mean.items()} | {
            "latent_vs_canonical_reduction": 1.0 - mean["latent_error"] / mean["canonical_error"],
            "cpd_vs_canonical_reduction": 1.0 - mean["cpd_residual"] / mean["canonical_error"]},
        "parameters": {"config": {k: getattr(config, k) for k in config.__dataclass_fields__},
                       "cpd": params, "device": str(device)},
        "timings": {"cpd_s": round(t_cpd, 3), "pca_s": round(t_pca, 3),
                    "report_s": round(t_eval, 3),
                    "total_s": round(time.perf_counter() - t_start, 3)},
        "input_hashes": dict(input_hashes or {}),
        "warnings": size_warnings,
    }
    return space, report


@dataclass(frozen=True)
class CpdTask:
    """One training instance's CPD fit: template points (M, 3) on the canonical, target points
    (N, 3) on the instance, the canonical's vertices (V, 3) (dataset units), the device and
    `nonrigid_cpd`'s keyword arguments."""

    name: str
    template: np.ndarray
    target: np.ndarray
    canonical_vertices: np.ndarray
    device: str
    cpd_kwargs: dict[str, Any]


@dataclass
class CpdFit:
    """The outcome of a `CpdTask`: displacement field at the canonical's vertices (V, 3), CPD
    weights W (M, 3), the report's per-instance entry, CPD's beta, and seconds taken."""

    displacement: np.ndarray
    weights: np.ndarray
    info: dict[str, Any]
    beta: float
    seconds: float


def fit_instance(task: CpdTask) -> CpdFit:
    """Return the CPD fit (canonical template -> instance target, float64) of `task`."""
    t0 = time.perf_counter()
    res = nonrigid_cpd(task.template, task.target, device=torch.device(task.device),
                       dtype=torch.float64, **task.cpd_kwargs)
    disp = to_numpy(res.field(task.canonical_vertices))
    dt = time.perf_counter() - t0
    info = {"name": task.name, "cpd_iterations": res.iterations,
            "cpd_converged": res.converged, "cpd_sigma": res.sigma2 ** 0.5,
            "cpd_lowrank": res.lowrank, "cpd_seconds": round(dt, 3)}
    return CpdFit(disp, to_numpy(res.W), info, res.beta, dt)


def _fit_all(tasks: list[CpdTask], executor=None,
             progress: Progress | None = None) -> list[CpdFit]:
    """Return the fits of `tasks` in their order: one after the other in this process, or as
    tasks on `executor` (`regtool.batch.executor`); `progress(name, done, total)` after each."""
    if executor is None:
        fits = []
        for done, task in enumerate(tasks, start=1):
            fits.append(fit_instance(task))
            if progress is not None:
                progress(task.name, done, len(tasks))
        return fits
    from regtool.batch.executor import run_all

    count = [0]

    def report(i: int, _fit: CpdFit) -> None:
        count[0] += 1
        if progress is not None:
            progress(tasks[i].name, count[0], len(tasks))

    return run_all(executor, fit_instance, tasks, report)


def check_sizes(canonical_vertices: np.ndarray, train: dict[str, np.ndarray], units: str,
                sources: dict[str, str] | None = None) -> list[str]:
    """Return a warning per training mesh (vertices (V, 3)) whose size (bounding-box diagonal)
    differs from the canonical's by more than SIZE_WARN_RATIO; MeshError naming the first one
    that differs by more than SIZE_ERROR_RATIO (a mesh in another unit)."""
    from regtool.data.dataset import (
        SIZE_ERROR_RATIO,
        SIZE_WARN_RATIO,
        mesh_size,
        size_message,
        size_ratio,
    )

    reference = mesh_size(canonical_vertices)
    warnings = []
    for name, vertices in train.items():
        size = mesh_size(vertices)
        label = f"training mesh {(sources or {}).get(name, name)}"
        if size_ratio(size, reference) > SIZE_ERROR_RATIO:
            raise MeshError(size_message(label, size, reference, units)
                            + f" (more than {SIZE_ERROR_RATIO:g}x: refused)")
        if size_ratio(size, reference) > SIZE_WARN_RATIO:
            warnings.append(size_message(label, size, reference, units))
    return warnings


def build_shapespace(dataset_root: Path, category: str, config: ShapeSpaceConfig, seed: int,
                     device: str | torch.device = "cpu", progress: Progress | None = None,
                     executor=None) -> tuple[ShapeSpace, dict[str, Any]]:
    """Return (ShapeSpace, report) for `category` of the dataset at `dataset_root`.

    The dataset is verified against its manifest (DatasetError if the category is missing, has
    fewer than 2 training meshes, or a file does not match); meshes are validated (MeshError for
    empty, degenerate or non-finite ones). `progress(name, done, total)` is called after each
    training instance; `executor` runs the CPD fits (None: here). Units are the dataset's.
    """
    t0 = time.perf_counter()
    data = load_training_data(dataset_root, category)
    space, report = build_from_category(data, config, seed, device, progress, executor)
    report["dataset"] = str(Path(dataset_root))
    report["timings"]["load_s"] = round(time.perf_counter() - t0 - report["timings"]["total_s"], 3)
    report["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    return space, report


def load_training_data(dataset_root: Path, category: str):
    """Return the verified CategoryData (canonical + training meshes, no test set) of
    `category`; DatasetError / MeshError for missing, inconsistent or bad data."""
    from regtool.data.dataset import load_category

    return load_category(Path(dataset_root), category, with_test=False, min_train=2)


def build_from_category(data, config: ShapeSpaceConfig, seed: int,
                        device: str | torch.device = "cpu",
                        progress: Progress | None = None,
                        executor=None) -> tuple[ShapeSpace, dict[str, Any]]:
    """Return (ShapeSpace, report) from a loaded `regtool.data.dataset.CategoryData`; `executor`
    as in `shapespace_from_meshes`."""
    return shapespace_from_meshes(
        (np.asarray(data.canonical.vertices), np.asarray(data.canonical.faces)),
        {n: (np.asarray(m.vertices), np.asarray(m.faces)) for n, m in data.train.items()},
        config, seed, device, category=data.name, units=data.units, input_hashes=data.hashes,
        sources=data.paths, progress=progress, executor=executor, symmetry=data.symmetry,
        mirror=data.mirror)
