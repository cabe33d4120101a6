"""`regtool evaluate`: the paper's Table 1 protocol on a dataset's test instances.

Per test instance: render the observed image at a seeded known pose (pyrender, photo-like,
random seeded background), register with the known pose and with `noise_draws` seeded pose
noise draws (joint mode), and compare the deformed canonical with the instance's evaluation
points (Table 1 metric: per point, L2 distance to the nearest vertex; object frame, dataset
units) beside the references: undeformed canonical, CPD in 3D, the latent fit to the true 3D
points (known pose, and from the same pose noise) and the latent projection of the instance's
CPD field (the best the shape space can express).

With `evaluate.views` N > 1 the instance is also observed from N - 1 more seeded viewpoints
around the first (`rig_poses`, their own generator `views_rng`) and the N views are registered
jointly, with known poses and, per pose-noise draw, from one shared object pose error of the
rig (`perturb_rig`): row keys "rgb_known_views", "rgb_noisy_views". With `register.refine`
"residual" every registration also reports its latent-only stage ("<key>_latent").
`noise_draws` 0 skips the pose-noise registrations (their columns are then None).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtool.batch.executor import _die_with_parent, worker_pool  # noqa: F401 (moved there)
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
    background: tuple[str, np.ndarray] | None = None  # (name, (H, W, 3) uint8 photo)
    occlusion: float = 0.0  # fraction of the object's pixels an occluder covers
    correspondence_path: str | None = None  # adds the learned backward's columns


def observation_camera(config: Config, image_size: tuple[int, int] | None = None
                       ) -> CameraIntrinsics:
    """Return the evaluation camera: `image_size` (W, H) — the U-Net's training size, so the
    object appears at the scale the network learned — or the unet section's training size,
    with the render section's vertical field of view."""
    width, height = image_size or (config.unet.image_width, config.unet.image_height)
    return CameraIntrinsics.from_fov(int(width), int(height), config.render.fov_y_deg)


def known_pose(rng: np.random.Generator, distance: float,
               elevation_deg: tuple[float, ...] = (10.0, 40.0)) -> Pose:
    """Return a seeded viewpoint: camera on a sphere of radius `distance`, azimuth uniform,
    elevation uniform in [low, high] = `elevation_deg` degrees, looking at the object origin."""
    low, high = elevation_deg
    return Pose.look_at(distance, azimuth_deg=float(rng.uniform(0.0, 360.0)),
                        elevation_deg=float(rng.uniform(low, high)))


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
                     distance: float, elevation_deg: tuple[float, ...] = (10.0, 40.0)
                     ) -> tuple[Pose, np.ndarray]:
    """Return (the true object -> camera pose in metres, the observed image (H, W, 3) float32
    RGB in [0, 1]): the test mesh (dataset units, `scale` to metres) rendered photo-like at a
    seeded viewpoint at `distance` metres (`known_pose`), in a random colour on a random
    background."""
    pose, shaded, _ = observe_instance_shaded(rng, mesh, scale, camera, distance,
                                              elevation_deg=elevation_deg)
    return pose, shaded.rgb


def observe_instance_shaded(rng: np.random.Generator, mesh, scale: float,
                            camera: CameraIntrinsics, distance: float,
                            background_size: tuple[int, int] | None = None,
                            elevation_deg: tuple[float, ...] = (10.0, 40.0),
                            scene_size: tuple[int, int] | None = None):
    """Return (pose, `ShadedImage`, background (H, W, 3) float32) of `observe_instance` (the
    same draws from `rng`, the same image). `background_size` (W, H): draw the background at
    that size, upsample it (bilinear) to `scene_size` (W, H; default: the camera's) and
    area-average that to the camera's size, so that cameras of one field of view and sizes up
    to `scene_size` all see the same scene, each integrating it over its pixels (the draws
    depend on the size drawn at)."""
    from regtool.render.shading import Material, random_background, render_shaded

    pose = known_pose(rng, distance, elevation_deg)
    size = (camera.width, camera.height)
    if background_size is None:
        background = random_background(rng, camera.height, camera.width)
    else:
        from regtool.render.clutter import resize

        drawn = (int(background_size[0]), int(background_size[1]))
        scene = tuple(int(x) for x in scene_size) if scene_size is not None else size
        background = random_background(rng, drawn[1], drawn[0])
        if scene != drawn:
            background = resize(background, scene[1], scene[0])
        if scene != size:
            background = resize(background, camera.height, camera.width)
    colour = tuple(rng.uniform(0.15, 0.9, 3).tolist())
    shaded = render_shaded(np.asarray(mesh.vertices) * scale, np.asarray(mesh.faces), pose,
                           camera, material=Material(colour, 0.1, 0.6), background=background)
    return pose, shaded, background


def stage_rng(seed: int, category: str, instance_index: int, background: str,
              occlusion: float) -> np.random.Generator:
    """Return the generator of an observation's photo crop and occluder: seeded by the run
    seed, the instance, the background's name and the occlusion (per mille), apart from
    `instance_rng` so the pose-noise draws are the same whatever the background."""
    import zlib

    return np.random.default_rng([seed, instance_index, sum(map(ord, category)),
                                  zlib.crc32(background.encode()), int(round(occlusion * 1000))])


def stage_observation(rng: np.random.Generator, shaded, background: np.ndarray,
                      photo: np.ndarray | None, occlusion: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Return (image (H, W, 3) float32 in [0, 1], visible object mask (H, W) bool): the
    rendering `shaded` (over `background`) moved onto a random crop of `photo` (H, W, 3) uint8
    (None: kept on its background), then a random textured occluder over `occlusion` of the
    object's pixels (`render.clutter.occlude`)."""
    from regtool.render.clutter import occlude, photo_crop

    rgb = np.asarray(shaded.rgb, np.float32)
    h, w = rgb.shape[:2]
    if photo is not None:
        crop = photo_crop(rng, photo, h, w, recolour=False)
        rgb = np.clip(rgb + (crop - background) * (1.0 - shaded.alpha[..., None]), 0.0, 1.0)
    mask = shaded.alpha >= 0.5
    if occlusion > 0:
        rgb, covered = occlude(rng, rgb, mask, occlusion)
        mask = mask & ~covered
    return rgb.astype(np.float32), mask


def evaluation_backgrounds(spec: str) -> list[tuple[str, np.ndarray]] | None:
    """Return the photos of `evaluate.backgrounds` as (name, (H, W, 3) uint8): "" -> None
    (the plain rendered backgrounds), "builtin" -> the held-back built-in photos
    (`render.clutter.HELD_BACK_PHOTOS`), else the images of that folder (file names);
    DatasetError for a missing folder or one without a readable image."""
    if not spec:
        return None
    if spec == "builtin":
        from regtool.render.clutter import builtin_photos

        return list(builtin_photos("held_back"))
    from regtool.features.views import load_named_backgrounds

    return list(load_named_backgrounds(Path(spec)))


def render_observation(rng: np.random.Generator, mesh, scale: float, camera: CameraIntrinsics,
                       pose: Pose) -> np.ndarray:
    """Return the observed image (H, W, 3) float32 RGB in [0, 1] of the test mesh (dataset
    units, `scale` to metres) rendered photo-like at `pose` (metres), in a random colour on a
    random background (drawn from `rng`, in that order)."""
    from regtool.render.shading import Material, random_background, render_shaded

    background = random_background(rng, camera.height, camera.width)
    colour = tuple(rng.uniform(0.15, 0.9, 3).tolist())
    observed = render_shaded(np.asarray(mesh.vertices) * scale, np.asarray(mesh.faces), pose,
                             camera, material=Material(colour, 0.1, 0.6),
                             background=background).rgb
    return observed


def views_rng(seed: int, category: str, instance_index: int) -> np.random.Generator:
    """Return the generator of one test instance's additional views (`rig_poses`), separate
    from `instance_rng` so that the 1-view draws do not depend on the number of views."""
    return np.random.default_rng([seed, instance_index, sum(map(ord, category)), 1])


def rig_poses(rng: np.random.Generator, first: Pose, count: int, distance: float
              ) -> list[Pose]:
    """Return `count` object -> camera poses (metres): `first`, then count - 1 cameras around
    the object at `distance`, azimuths spread evenly from the first camera's (360 / count
    degrees apart, jittered by +/-15 degrees), elevations uniform in [10, 40] degrees."""
    eye = -first.rotation.T @ first.translation
    azimuth = float(np.degrees(np.arctan2(eye[1], eye[0])))
    poses = [first]
    for i in range(1, count):
        poses.append(Pose.look_at(distance, azimuth_deg=azimuth + 360.0 * i / count
                                  + float(rng.uniform(-15.0, 15.0)),
                                  elevation_deg=float(rng.uniform(10.0, 40.0))))
    return poses


def perturb_rig(poses: list[Pose], noise: np.ndarray) -> list[Pose]:
    """Return the poses of a calibrated rig after one shared object pose error: `noise` (6,)
    applied to the first view as `perturb`, the views' relative poses kept."""
    from regtool.registration.optimise import apply_increment

    return apply_increment(poses, np.asarray(noise, np.float64), 1.0)


def _stats(points: np.ndarray, vertices: np.ndarray) -> dict:
    from regtool.evaluation.metrics import distance_stats

    return distance_stats(points, vertices)


def category_symmetry(data):
    """Return the symmetry of a loaded `data.dataset.CategoryData` (the manifest's
    `data.manifest.Symmetry`) with its point in metres, or None: pose errors of a symmetric
    category count the axis tilt only (`metrics.pose_error`)."""
    from dataclasses import replace

    symmetry = data.symmetry
    if symmetry is None:
        return None
    scale = UNITS_TO_METRES[data.units]
    x, y, z = (float(v) * scale for v in symmetry.point)
    return replace(symmetry, point=(x, y, z))


@dataclass(frozen=True)
class _Scene:
    """What every RGB registration of one test instance shares: the shape space, U-Net and
    (optional) correspondence network, the evaluation points, the camera, the observed images
    (the first view, then the rig's), the true pose of the first view (metres), the category's
    symmetry, the segmentation loss and the config."""

    space: Any
    unet: Any
    correspondence: Any
    points: np.ndarray
    camera: CameraIntrinsics
    images: list[np.ndarray]
    true_pose: Pose
    symmetry: Any
    feature_loss: Any
    config: Config
    device: torch.device


def evaluate_instance(job: InstanceJob) -> dict:
    """Return the report row of one test instance (method -> distance stats, dataset units),
    with per-method timings: the 3D references (`_references_3d`), the observation(s)
    (`_observe`), then the RGB registrations (`_rgb_stats`) with the known pose, from
    `noise_draws` pose-noise draws, with N views and with the learned backward as configured."""
    from regtool.data.dataset import load_category
    from regtool.evaluation.report import mean_over_draws
    from regtool.features.compare import FeatureLoss
    from regtool.registration.pipeline import load_correspondence_for, load_models
    from regtool.shapespace.fit import fit_points

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    cfg = job.config
    data = load_category(Path(job.dataset_root), job.category)
    test = data.test[job.instance_index]
    space, unet, unet_meta = load_models(Path(job.shapespace_path), Path(job.unet_path), device)
    scale = UNITS_TO_METRES[data.units]  # dataset units -> metres
    rng = instance_rng(job.seed, job.category, job.instance_index)
    timings: dict[str, float] = {}
    row: dict = {"category": job.category, "instance": test.name}

    t0 = time.perf_counter()
    row.update(_references_3d(space, test, cfg, rng))
    timings["references_3d"] = time.perf_counter() - t0

    camera = observation_camera(cfg, unet_meta.get("image_size"))
    true_poses, images = _observe(job, test, scale, camera, rng, row)
    scene = _Scene(space, unet,
                   None if job.correspondence_path is None else
                   load_correspondence_for(space, Path(job.correspondence_path), device),
                   test.eval_points, camera, images, true_poses[0],
                   category_symmetry(data),
                   FeatureLoss(unet, cfg.register.loss), cfg, device)

    def record(key: str, value: tuple[dict, dict | None]) -> None:
        row[key] = value[0]
        if value[1] is not None:
            row[f"{key}_latent"] = value[1]

    t0 = time.perf_counter()
    record("rgb_known", _rgb_stats(scene, true_poses[:1], joint=False))
    timings["rgb_known"] = time.perf_counter() - t0
    if len(true_poses) > 1:
        t0 = time.perf_counter()
        record("rgb_known_views", _rgb_stats(scene, true_poses, joint=False))
        timings["rgb_known_views"] = time.perf_counter() - t0
    if scene.correspondence is not None:  # the learned backward from the true pose
        t0 = time.perf_counter()
        row["rgb_known_learned"] = _rgb_stats(scene, true_poses[:1], joint=True,
                                              learned=True)[0]
        timings["rgb_known_learned"] = time.perf_counter() - t0

    noisy: dict[str, list] = {}
    noisy_3d = []
    t0 = time.perf_counter()
    for _ in range(cfg.evaluate.noise_draws):
        noise = pose_noise(rng, cfg.evaluate.pose_noise_xy, cfg.evaluate.pose_noise_deg)
        start = [perturb(true_poses[0], noise)]
        draws = {"rgb_noisy": _rgb_stats(scene, start, joint=True)}
        if len(true_poses) > 1:  # one shared object pose error of the calibrated rig
            draws["rgb_noisy_views"] = _rgb_stats(scene, perturb_rig(true_poses, noise),
                                                  joint=True)
        if scene.correspondence is not None:  # the same draw (no extra random numbers drawn)
            draws["rgb_noisy_learned"] = _rgb_stats(scene, start, joint=True, learned=True)
        for key, (final, latent) in draws.items():
            noisy.setdefault(key, []).append(final)
            if latent is not None:
                noisy.setdefault(f"{key}_latent", []).append(latent)
        # The same noise for the 3D fit: an object-frame perturbation of the initial pose.
        rot = Pose.identity().compose(noise[:3], noise[3:] / scale)
        fit_noisy = fit_points(space, test.eval_points, pose=rot, optimise_pose=True,
                               iterations=cfg.evaluate.fit_iterations)
        noisy_3d.append(_stats(test.eval_points, space.deform_numpy(fit_noisy.z)))
    if cfg.evaluate.noise_draws > 0:
        timings["pose_noise"] = time.perf_counter() - t0
    for key, draws_list in noisy.items():
        row[key] = mean_over_draws(draws_list)
    row["rgb_noisy"] = row.get("rgb_noisy")
    row["latent_3d_noisy"] = mean_over_draws(noisy_3d) if noisy_3d else None
    row["timings"] = timings
    return row


def _references_3d(space, test, cfg: Config, rng: np.random.Generator) -> dict:
    """Return the 3D reference columns of a test instance (distance stats, dataset units):
    the undeformed canonical, CPD in 3D from the canonical to the instance's surface (seeded
    samples: the first two draws of `rng`), the latent projection of that CPD field and the
    latent fit to the true 3D points (known pose)."""
    from regtool.geometry.sampling import sample_surface
    from regtool.shapespace.cpd import nonrigid_cpd
    from regtool.shapespace.fit import fit_points

    points, ss = test.eval_points, cfg.shapespace
    template_seed, target_seed = reference_seeds(rng)
    template = sample_surface(space.canonical_vertices, space.faces, ss.template_points,
                              np.random.default_rng(template_seed))
    target = sample_surface(np.asarray(test.mesh.vertices), np.asarray(test.mesh.faces),
                            ss.target_points, np.random.default_rng(target_seed))
    field = nonrigid_cpd(template, target, **ss.cpd_kwargs()).field(
        space.canonical_vertices).cpu().numpy()
    fit = fit_points(space, points, iterations=cfg.evaluate.fit_iterations)
    return {"canonical": _stats(points, space.canonical_vertices),
            "cpd_3d": _stats(points, space.canonical_vertices + field),
            "latent_gt": _stats(points, space.deform_numpy(space.project(field))),
            "latent_3d_known": _stats(points, space.deform_numpy(fit.z))}


def _observe(job: InstanceJob, test, scale: float, camera: CameraIntrinsics,
             rng: np.random.Generator, row: dict) -> tuple[list[Pose], list[np.ndarray]]:
    """Return (true object -> camera poses in metres, observed images (H, W, 3) float32) of a
    test instance: the seeded photo-like first view (drawn from `rng`), moved onto the job's
    photo and occluded as the job says (noted in `row`), then `evaluate.views` - 1 more views
    of the rig from their own generator."""
    cfg = job.config
    pose, shaded, plain = observe_instance_shaded(
        rng, test.mesh, scale, camera, cfg.render.distance,
        elevation_deg=cfg.evaluate.elevation_deg)
    observed = shaded.rgb
    if job.background is not None or job.occlusion > 0:
        name = job.background[0] if job.background is not None else ""
        observed, visible = stage_observation(
            stage_rng(job.seed, job.category, job.instance_index, name, job.occlusion), shaded,
            plain, None if job.background is None else job.background[1], job.occlusion)
        row.update(background=name or None, occlusion=job.occlusion,
                   visible_pixels=int(visible.sum()), object_pixels=int(shaded.mask.sum()))
        if name:
            row["instance"] = f"{test.name} @ {name}"
    poses, images = [pose], [observed]
    if cfg.evaluate.views > 1:  # the other views of the rig, from their own generator
        vrng = views_rng(job.seed, job.category, job.instance_index)
        poses = rig_poses(vrng, pose, cfg.evaluate.views, cfg.render.distance)
        images += [render_observation(vrng, test.mesh, scale, camera, p) for p in poses[1:]]
    return poses, images


def _rgb_stats(scene: _Scene, starts: list[Pose], joint: bool,
               learned: bool = False) -> tuple[dict, dict | None]:
    """Return the stats of the RGB registration of the first len(starts) views of `scene`
    from `starts` (one initial pose per view; `learned`: with the learned backward) and, with
    a refinement, those of its latent-only result (else None); in joint mode with the start's
    and the final pose's errors against the truth (symmetry-aware, metres)."""
    from regtool.evaluation.metrics import pose_error
    from regtool.registration.pipeline import make_observation, run_registration
    from regtool.registration.refine import RefinedResult

    cfg = scene.config
    obs = [make_observation(im, scene.camera, p, scene.feature_loss, cfg.register.mask_dilation)
           for im, p in zip(scene.images[:len(starts)], starts)]
    run_cfg = replace(cfg, register=replace(cfg.register, backward="learned", candidates=())) \
        if learned else cfg  # the learned column: the learned backward alone
    result = run_registration(scene.space, scene.unet, obs, run_cfg, scene.device, joint=joint,
                              correspondence=scene.correspondence)
    stats = _stats(scene.points, result.vertices)
    if learned:
        stats.update(field_seconds=result.timings.get("field", 0.0),
                     field_px=result.descents[0].get("field_px", []))
    stats.update(iterations=len(result.history), seconds=result.timings["total"],
                 stop_reason=result.stop_reason, initial_loss=result.initial_loss,
                 best_loss=result.best_loss, views=len(obs))
    latent = None
    if isinstance(result, RefinedResult) and result.latent_vertices is not None:
        latent = _stats(scene.points, result.latent_vertices)
        stats.update(residual_rms=result.refinement["residual_rms"],
                     residual_max=result.refinement["residual_max"],
                     refine_seconds=result.refinement["seconds"])
    if joint:  # how far the start and the final pose are from the true one (metres)
        start_error = pose_error(starts[0], scene.true_pose, scene.symmetry)
        final_error = pose_error(result.poses[0], scene.true_pose, scene.symmetry)
        pose_stats = dict(start_rotation_deg=start_error["rotation_deg"],
                          start_translation_m=start_error["translation"],
                          rotation_deg=final_error["rotation_deg"],
                          translation_m=final_error["translation"],
                          rotation_full_deg=final_error["rotation_full_deg"])
        stats.update(pose_stats)
        if latent is not None:
            latent.update(pose_stats)
    return stats, latent


def evaluate(dataset_root: Path, categories: list[str], shapespaces: dict[str, Path],
             unets: dict[str, Path], config: Config, seed: int, device: str,
             progress=None, executor: str = "local", address: str | None = None,
             backgrounds: list[tuple[str, np.ndarray]] | None = None,
             correspondences: dict[str, Path] | None = None) -> list[dict]:
    """Return the report rows of every test instance of `categories`, evaluated on `executor`
    ("local": in this process, or in parallel processes when `config.evaluate.workers` (0: one
    per core) allows; "ray": on that many Ray actors, `address` as `batch.executor.RayExecutor`)
    with the same numbers for the same worker count. With `backgrounds` ((name, (H, W, 3) uint8)
    photos; `evaluation_backgrounds`) every instance is observed once over a crop of each (rows
    named "<instance> @ <photo>"); `config.evaluate.occlusion` covers that fraction of the
    object's pixels with an occluder. `correspondences` (category -> network) adds the learned
    backward's columns."""
    from regtool.batch.executor import opened, run_all
    from regtool.data.manifest import read_manifest

    manifest = read_manifest(dataset_root)
    occlusion = config.evaluate.occlusion
    jobs = []
    scenes: list[tuple[str, np.ndarray] | None] = list(backgrounds) if backgrounds else [None]
    for c in categories:
        for i, _ in enumerate(manifest.category(c).test):
            corr = None if correspondences is None else str(correspondences[c])
            for bg in scenes:
                jobs.append(InstanceJob(str(dataset_root), c, i, str(shapespaces[c]),
                                        str(unets[c]), config, seed, device, 0, bg, occlusion,
                                        corr))
    workers = config.evaluate.workers or (os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))
    if device.startswith("cuda"):
        workers = 1
    if workers > 1 or executor != "local":
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs = [InstanceJob(**{**job.__dict__, "threads": threads}) for job in jobs]

    def report(k: int, row: dict) -> None:
        if progress:
            progress(f"{jobs[k].category}/{row['instance']}")

    with opened(executor, workers, address=address, threads=0) as pool:
        return run_all(pool, evaluate_instance, jobs, report)
