"""`regtool evaluate`: the paper's Table 1 protocol on a dataset's test instances.

Per test instance: render the observed image at a seeded known pose (pyrender, photo-like,
random seeded background), register with the known pose and with `noise_draws` seeded pose
noise draws (joint mode), and compare the deformed canonical with the instance's evaluation
points (Table 1 metric: per point, L2 distance to the nearest vertex; object frame, dataset
units) beside the references: undeformed canonical, CPD in 3D, the latent fit to the true 3D
points (known pose, and from the same pose noise) and the latent projection of the instance's
CPD field (the best the shape space can express).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from regtool.config import Config
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.units import UNITS_TO_METRES


@dataclass(frozen=True)
class InstanceJob:
    """Everything one worker needs to evaluate one test instance."""

    dataset_root: str
    category: str
    instance_index: int
    shapespace_path: str
    unet_path: str
    config: Config
    seed: int
    device: str
    threads: int
    correspondence_path: str | None = None  # adds the learned backward's columns


def observation_camera(config: Config, image_size: tuple[int, int] | None = None
                       ) -> CameraIntrinsics:
    """Return the evaluation camera: `image_size` (W, H) — the U-Net's training size, so the
    object appears at the scale the network learned — or the render section's size, with the
    render section's vertical field of view."""
    width, height = image_size or (config.render.width, config.render.height)
    return CameraIntrinsics.from_fov(int(width), int(height), config.render.fov_y_deg)


def known_pose(rng: np.random.Generator, distance: float) -> Pose:
    """Return a seeded viewpoint: camera on a sphere of radius `distance`, azimuth uniform,
    elevation in [10, 40] degrees, looking at the object origin."""
    return Pose.look_at(distance, azimuth_deg=float(rng.uniform(0.0, 360.0)),
                        elevation_deg=float(rng.uniform(10.0, 40.0)))


def pose_noise(rng: np.random.Generator, xy: float, degrees: float) -> np.ndarray:
    """Return a pose increment (6,): axis-angle with each component uniform in +/-`degrees`
    (radians out) and camera-frame x, y translation uniform in +/-`xy` metres (z: 0)."""
    rot = np.radians(rng.uniform(-degrees, degrees, 3))
    return np.concatenate([rot, [rng.uniform(-xy, xy), rng.uniform(-xy, xy), 0.0]])


def perturb(pose: Pose, noise: np.ndarray) -> Pose:
    """Return `pose` with the noise increment applied in the camera frame about the object
    origin (rotation) and along the camera axes (translation, metres)."""
    return pose.compose(noise[:3], noise[3:])


def instance_rng(seed: int, category: str, instance_index: int) -> np.random.Generator:
    """Return the generator of one test instance's draws (the 3D references' sampling seeds,
    then the observation, then the pose-noise draws), seeded by the run seed, category and
    instance index."""
    return np.random.default_rng([seed, instance_index, sum(map(ord, category))])


def reference_seeds(rng: np.random.Generator) -> tuple[int, int]:
    """Return the seeds of the surface samples (canonical, test instance) for CPD in 3D: the
    first two draws of `instance_rng`."""
    return int(rng.integers(2 ** 31)), int(rng.integers(2 ** 31))


def observe_instance(rng: np.random.Generator, mesh, scale: float, camera: CameraIntrinsics,
                     distance: float) -> tuple[Pose, np.ndarray]:
    """Return (the true object -> camera pose in metres, the observed image (H, W, 3) float32
    RGB in [0, 1]): the test mesh (dataset units, `scale` to metres) rendered photo-like at a
    seeded viewpoint at `distance` metres, in a random colour on a random background."""
    from regtool.render.shading import Material, random_background, render_shaded

    pose = known_pose(rng, distance)
    background = random_background(rng, camera.height, camera.width)
    colour = tuple(rng.uniform(0.15, 0.9, 3).tolist())
    observed = render_shaded(np.asarray(mesh.vertices) * scale, np.asarray(mesh.faces), pose,
                             camera, material=Material(colour, 0.1, 0.6),
                             background=background).rgb
    return pose, observed


def _stats(points: np.ndarray, vertices: np.ndarray) -> dict:
    from regtool.evaluation.metrics import distance_stats

    return distance_stats(points, vertices)


def category_symmetry(dataset_root: Path, category: str, scale: float):
    """Return the category's `data.manifest.Symmetry` from the dataset's manifest with its
    point in metres (`scale`: dataset units -> metres), or None: pose errors of a symmetric
    category count the axis tilt only (`metrics.pose_error`)."""
    from dataclasses import replace

    from regtool.data.manifest import read_manifest

    symmetry = read_manifest(dataset_root).category(category).symmetry
    if symmetry is None:
        return None
    x, y, z = (float(v) * scale for v in symmetry.point)
    return replace(symmetry, point=(x, y, z))


def evaluate_instance(job: InstanceJob) -> dict:
    """Return the report row of one test instance (method -> distance stats, dataset units),
    with per-method timings."""
    from regtool.data.dataset import load_category
    from regtool.evaluation.metrics import pose_error
    from regtool.features.compare import FeatureLoss
    from regtool.registration.pipeline import load_models, make_observation, run_registration
    from regtool.shapespace.cpd import nonrigid_cpd

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    cfg = job.config
    data = load_category(Path(job.dataset_root), job.category)
    test = data.test[job.instance_index]
    space, unet, unet_meta = load_models(Path(job.shapespace_path), Path(job.unet_path), device)
    scale = UNITS_TO_METRES[data.units]  # dataset units -> metres
    symmetry = category_symmetry(Path(job.dataset_root), job.category, scale)
    rng = instance_rng(job.seed, job.category, job.instance_index)
    points = test.eval_points
    timings: dict[str, float] = {}
    row: dict = {"category": job.category, "instance": test.name}

    # References in 3D.
    t0 = time.perf_counter()
    row["canonical"] = _stats(points, space.canonical_vertices)
    ss = cfg.shapespace
    from regtool.shapespace.build import sample_surface

    template_seed, target_seed = reference_seeds(rng)
    template = sample_surface(space.canonical_vertices, space.faces, ss.template_points,
                              np.random.default_rng(template_seed))
    target = sample_surface(np.asarray(test.mesh.vertices), np.asarray(test.mesh.faces),
                            ss.target_points, np.random.default_rng(target_seed))
    cpd = nonrigid_cpd(template, target, beta=ss.beta, lambda_=ss.lambda_, w=ss.w,
                       tolerance=ss.tolerance, max_iterations=ss.max_iterations,
                       lowrank_threshold=ss.lowrank_threshold, lowrank_rank=ss.lowrank_rank)
    field = cpd.field(space.canonical_vertices).cpu().numpy()
    row["cpd_3d"] = _stats(points, space.canonical_vertices + field)
    row["latent_gt"] = _stats(points, space.deform_numpy(space.project(field)))
    fit = space.fit_points(points)
    row["latent_3d_known"] = _stats(points, space.deform_numpy(fit.z))
    timings["references_3d"] = time.perf_counter() - t0

    # The observation: photo-like rendering at a seeded known pose.
    camera = observation_camera(cfg, unet_meta.get("image_size"))
    pose_metres, observed = observe_instance(rng, test.mesh, scale, camera, cfg.render.distance)
    feature_loss = FeatureLoss(unet, cfg.register.loss)

    corr_net = None
    if job.correspondence_path is not None:
        from regtool.registration.pipeline import load_correspondence_for

        corr_net = load_correspondence_for(space, Path(job.correspondence_path), device)

    def rgb_register(start: Pose, joint: bool, learned: bool = False) -> dict:
        obs = make_observation(observed, camera, start, feature_loss, cfg.register.mask_dilation)
        run_cfg = replace(cfg, register=replace(cfg.register, backward="learned")) \
            if learned else cfg
        result = run_registration(space, unet, [obs], run_cfg, device, joint=joint,
                                  correspondence=corr_net)
        stats = _stats(points, result.vertices)
        if learned:
            stats.update(field_seconds=result.timings.get("field", 0.0),
                         field_px=result.descents[0].get("field_px", []))
        stats.update(iterations=len(result.history), seconds=result.timings["total"],
                     stop_reason=result.stop_reason, initial_loss=result.initial_loss,
                     best_loss=result.best_loss)
        if joint:  # how far the start and the final pose are from the true one (metres)
            start_error, final_error = pose_error(start, pose_metres, symmetry), pose_error(
                result.poses[0], pose_metres, symmetry)
            stats.update(start_rotation_deg=start_error["rotation_deg"],
                         start_translation_m=start_error["translation"],
                         rotation_deg=final_error["rotation_deg"],
                         translation_m=final_error["translation"],
                         rotation_full_deg=final_error["rotation_full_deg"])
        return stats

    t0 = time.perf_counter()
    row["rgb_known"] = rgb_register(pose_metres, joint=False)
    timings["rgb_known"] = time.perf_counter() - t0
    if corr_net is not None:  # the learned backward from the true pose (the field may move it)
        t0 = time.perf_counter()
        row["rgb_known_learned"] = rgb_register(pose_metres, joint=True, learned=True)
        timings["rgb_known_learned"] = time.perf_counter() - t0

    from regtool.evaluation.report import mean_over_draws

    noisy_rgb, noisy_3d, noisy_learned = [], [], []
    t0 = time.perf_counter()
    for _ in range(cfg.evaluate.noise_draws):
        noise = pose_noise(rng, cfg.evaluate.pose_noise_xy, cfg.evaluate.pose_noise_deg)
        noisy_rgb.append(rgb_register(perturb(pose_metres, noise), joint=True))
        if corr_net is not None:  # the same draw (no extra random numbers drawn)
            noisy_learned.append(rgb_register(perturb(pose_metres, noise), joint=True,
                                              learned=True))
        # The same noise for the 3D fit: an object-frame perturbation of the initial pose.
        rot = Pose.identity().compose(noise[:3], noise[3:] / scale)
        fit_noisy = space.fit_points(points, pose=rot, optimise_pose=True)
        noisy_3d.append(_stats(points, space.deform_numpy(fit_noisy.z)))
    timings["pose_noise"] = time.perf_counter() - t0
    row["rgb_noisy"] = mean_over_draws(noisy_rgb)
    row["latent_3d_noisy"] = mean_over_draws(noisy_3d)
    if noisy_learned:
        row["rgb_noisy_learned"] = mean_over_draws(noisy_learned)
    row["timings"] = timings
    return row


def evaluate(dataset_root: Path, categories: list[str], shapespaces: dict[str, Path],
             unets: dict[str, Path], config: Config, seed: int, device: str,
             progress=None, correspondences: dict[str, Path] | None = None) -> list[dict]:
    """Return the report rows of every test instance of `categories`, evaluated in parallel
    processes when `config.evaluate.workers` (0: one per core) allows."""
    from regtool.data.manifest import read_manifest

    manifest = read_manifest(dataset_root)
    jobs = []
    for c in categories:
        for i, _ in enumerate(manifest.category(c).test):
            corr = None if correspondences is None else str(correspondences[c])
            jobs.append(InstanceJob(str(dataset_root), c, i, str(shapespaces[c]), str(unets[c]),
                                    config, seed, device, 0, corr))
    workers = config.evaluate.workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))
    if device.startswith("cuda"):
        workers = 1
    if workers == 1:
        rows: list[dict] = []
        for job in jobs:
            rows.append(evaluate_instance(job))
            if progress:
                progress(f"{job.category}/{rows[-1]['instance']}")
        return rows
    import concurrent.futures as cf

    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [InstanceJob(**{**job.__dict__, "threads": threads}) for job in jobs]
    with worker_pool(workers) as pool:
        futures = {pool.submit(evaluate_instance, job): k for k, job in enumerate(jobs)}
        by_job: dict[int, dict] = {}
        for fut in cf.as_completed(futures):
            k = futures[fut]
            by_job[k] = fut.result()
            if progress:
                progress(f"{jobs[k].category}/{by_job[k]['instance']}")
    return [by_job[k] for k in range(len(jobs))]


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_pool(workers: int):
    """Return a process pool (`concurrent.futures.ProcessPoolExecutor`, spawn start method) of
    `workers` processes that end when this process ends, also when it is killed with SIGKILL
    and cannot shut the pool down (`_die_with_parent`). Submit from the thread that keeps the
    pool: Linux signals a worker when the thread that started it ends."""
    import concurrent.futures as cf
    import multiprocessing as mp

    return cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                  initializer=_die_with_parent, initargs=(os.getpid(),))


def _die_with_parent(parent_pid: int) -> None:
    """Pool worker initializer: end this process (SIGKILL) when its parent `parent_pid` ends, by
    PR_SET_PDEATHSIG on Linux and, everywhere, a daemon thread that polls the parent id."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was set up
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="regtool-parent-watch",
                     daemon=True).start()


def _watch_parent(parent_pid: int, interval_s: float = 0.5) -> None:
    """Return never: exit the process once its parent is no longer `parent_pid`."""
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    os._exit(1)
