"""Randomised training views for the U-Net, rendered headless with `render_shaded`.

A view: a mesh of a category seen from a random direction (rotation uniform over SO(3), i.e.
any point of the view sphere and any roll) at the working distance (jittered), shifted so its
origin projects anywhere in the central half of the image, under random lights, with a random
object material and a random background (flat, gradient, noise or a crop of a user image).
With the sampler's clutter settings (`ViewSampler.clutter` ...) a view may instead have a
structured background (a crop of a built-in or user photo, dead leaves, textured shapes;
`render.clutter`), distractor objects (meshes of other categories) behind and in front of the
object, a partial occluder and camera effects (colour jitter, blur, sensor noise).
Labels: 0 background, k >= 1 the 1-based category index, per pixel (a distractor or occluder in
front of the object is background).

This module does not import torch itself, so render worker processes start quickly; every
function is deterministic given its seed.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import pickle
import queue
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regtool.errors import DatasetError, RenderError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ViewMesh:
    """A mesh to render: vertices (V, 3) float64 (object frame, metres), faces (F, 3) int64,
    label (1-based category index), name, and optionally its unit vertex normals (V, 3)
    (None: computed for every view, about a third of a 160x120 view's time)."""

    vertices: np.ndarray
    faces: np.ndarray
    label: int
    name: str
    normals: np.ndarray | None = None


@dataclass(frozen=True)
class ViewSampler:
    """What views look like: image size, vertical field of view (degrees), working distance
    (metres), relative distance jitter, and optional background images (H, W, 3) uint8 (kept
    as bytes: the sampler is sent to every render worker).

    Clutter (all off by default, each a probability per view): `clutter` a structured
    background (photo crop, dead leaves or textured shapes; the photos are `backgrounds` plus
    the built-in photos of `photo_split`: "train", "held_back" or "" for none), `distractors`
    1-2 meshes of `distractor_meshes` rendered behind and (half of the time) in front of the
    object, `occluders` a textured occluder over a fraction (uniform in `occlusion`) of the
    object, `photometric` colour jitter, blur and noise, `supersample` the object rendered at
    2-3x the size and area-averaged (softer edges); `photo_share`: the share of structured
    backgrounds that are photo crops (when there are photos)."""

    width: int
    height: int
    fov_y_deg: float
    distance: float
    distance_jitter: float
    backgrounds: tuple[np.ndarray, ...] = ()
    clutter: float = 0.0
    distractors: float = 0.0
    occluders: float = 0.0
    photometric: float = 0.0
    supersample: float = 0.0
    photo_split: str = ""
    distractor_meshes: tuple[ViewMesh, ...] = ()
    occlusion: tuple[float, float] = (0.05, 0.4)
    photo_share: float = 0.5

    def photos(self) -> tuple[np.ndarray, ...]:
        """Return the photos structured backgrounds crop: the built-in ones of `photo_split`,
        then the user's `backgrounds`."""
        from regtool.render.clutter import builtin_photos

        own = tuple(img for _, img in builtin_photos(self.photo_split)) if self.photo_split \
            else ()
        return own + tuple(self.backgrounds)


def load_backgrounds(folder: Path | None, max_images: int = 64,
                     max_side: int = 640) -> tuple[np.ndarray, ...]:
    """Return the images in `folder` (sorted by name, at most `max_images`) as (H, W, 3)
    uint8 RGB, downscaled so the longer side is <= `max_side`; () for None.
    DatasetError if the folder is missing or holds no readable image."""
    if folder is None:
        return ()
    return tuple(img for _, img in load_named_backgrounds(folder, max_images, max_side))


def load_named_backgrounds(folder: Path, max_images: int = 64, max_side: int = 640
                           ) -> tuple[tuple[str, np.ndarray], ...]:
    """Return (file name, image) pairs of `load_backgrounds`."""
    import imageio.v3 as iio

    from regtool.render.clutter import as_rgb_uint8

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"backgrounds folder not found: {folder}")
    images: list[tuple[str, np.ndarray]] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or len(images) >= max_images:
            continue
        try:
            with warnings.catch_warnings():  # imageio warns while probing unreadable files
                warnings.simplefilter("ignore")
                img = np.asarray(iio.imread(path))
        except Exception:  # unreadable files are skipped; an empty result is an error below
            continue
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] >= 3)):
            continue
        images.append((path.name, as_rgb_uint8(img, max_side)))
    if not images:
        raise DatasetError(f"backgrounds folder {folder} holds no readable image "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    return tuple(images)


def sample_pose(rng: np.random.Generator, sampler: ViewSampler):
    """Return a random object -> camera `Pose`: uniform rotation, depth `distance * (1 + u)`
    with u uniform in [-jitter, jitter], and x, y such that the object origin projects into the
    central half of the image."""
    from scipy.spatial.transform import Rotation

    from regtool.geometry.camera import Pose

    rot = Rotation.from_quat(_unit_quaternion(rng)).as_matrix()
    z = sampler.distance * (1.0 + rng.uniform(-sampler.distance_jitter, sampler.distance_jitter))
    tan_y = math.tan(math.radians(sampler.fov_y_deg) / 2.0)
    tan_x = tan_y * sampler.width / sampler.height
    x = rng.uniform(-0.5, 0.5) * tan_x * z
    y = rng.uniform(-0.5, 0.5) * tan_y * z
    return Pose(rot, np.array([x, y, z]))


def _unit_quaternion(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


def render_view(mesh: ViewMesh, sampler: ViewSampler, rng: np.random.Generator,
                pose=None) -> tuple[np.ndarray, np.ndarray]:
    """Return `(rgb, label)` of one random view: rgb (H, W, 3) uint8, label (H, W) uint8
    (0 background, `mesh.label` where the object covers the pixel centre). `pose`: the object
    -> camera `Pose` to render at (None: drawn by `sample_pose`); lights, material and
    background are drawn either way."""
    from regtool.geometry.camera import CameraIntrinsics
    from regtool.render.shading import random_background, random_lighting, random_material

    camera = CameraIntrinsics.from_fov(sampler.width, sampler.height, sampler.fov_y_deg)
    pose = sample_pose(rng, sampler) if pose is None else pose
    material = random_material(rng)
    lighting = random_lighting(rng)
    cluttered = sampler.clutter > 0 and rng.uniform() < sampler.clutter
    if cluttered:
        from regtool.render.clutter import clutter_background

        background = clutter_background(rng, sampler.height, sampler.width, sampler.photos(),
                                        sampler.photo_share)
    else:
        images = None
        if sampler.backgrounds:  # convert only the one image random_background may crop
            pick = sampler.backgrounds[int(rng.integers(len(sampler.backgrounds)))]
            images = [pick.astype(np.float32) / 255.0]
        background = random_background(rng, sampler.height, sampler.width, images)
    front: list[ViewMesh] = []
    if sampler.distractor_meshes and sampler.distractors > 0 \
            and rng.uniform() < sampler.distractors:
        for _ in range(int(rng.integers(1, 3))):
            other = sampler.distractor_meshes[int(rng.integers(len(sampler.distractor_meshes)))]
            if rng.uniform() < 0.5:
                front.append(other)
            else:  # behind: part of the background
                background = _render_distractor(other, pose, camera, sampler, rng, background,
                                                 1.15, 1.6).rgb
    factor = 1
    if sampler.supersample > 0 and rng.uniform() < sampler.supersample:
        factor = int(rng.integers(2, 4))
    rgb_f, alpha = _render_object(mesh, pose, camera, material, lighting, background, factor)
    label = np.where(alpha >= 0.5, mesh.label, 0).astype(np.uint8)
    full = int((label > 0).sum())
    for other in front:  # in front, kept only if at least half of the object stays visible
        shaded = _render_distractor(other, pose, camera, sampler, rng, rgb_f, 0.6, 0.85)
        hidden = shaded.alpha >= 0.5
        if full and ((label > 0) & ~hidden).sum() >= 0.5 * full:
            rgb_f, label = shaded.rgb, np.where(hidden, 0, label).astype(np.uint8)
    if sampler.occluders > 0 and rng.uniform() < sampler.occluders:
        from regtool.render.clutter import occlude

        rgb_f, covered = occlude(rng, rgb_f, label > 0, rng.uniform(*sampler.occlusion),
                                 sampler.photos())
        label = np.where(covered, 0, label).astype(np.uint8)
    if sampler.photometric > 0 and rng.uniform() < sampler.photometric:
        from regtool.render.clutter import photometric

        rgb_f = photometric(rng, rgb_f)
    rgb = np.clip(rgb_f * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return rgb, label


def _render_object(mesh: ViewMesh, pose, camera, material, lighting, background: np.ndarray,
                   factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (rgb (H, W, 3) float32, coverage alpha (H, W)) of `mesh` over `background`
    (H, W, 3), rendered at `factor` times the camera's size (the background upsampled) and
    area-averaged back when `factor` > 1."""
    from regtool.render.shading import render_shaded

    if factor <= 1:
        img = render_shaded(mesh.vertices, mesh.faces, pose, camera, material, lighting,
                            background, vertex_normals=mesh.normals)
        return img.rgb, img.alpha
    from regtool.render.clutter import resize

    h, w = camera.height, camera.width
    big = camera.scaled(w * factor, h * factor)
    img = render_shaded(mesh.vertices, mesh.faces, pose, big, material, lighting,
                        resize(background, big.height, big.width), vertex_normals=mesh.normals)
    return resize(img.rgb, h, w), resize(img.alpha[..., None], h, w)[..., 0]


def _render_distractor(other: ViewMesh, pose, camera, sampler: ViewSampler,
                       rng: np.random.Generator, background: np.ndarray, near: float,
                       far: float):
    """Return the `ShadedImage` of mesh `other` over `background`, in a random colour and
    rotation at `near`-`far` times the object's depth, its origin placed within about one
    object size of the object's in the image."""
    from regtool.geometry.camera import Pose
    from regtool.render.shading import random_lighting, random_material, render_shaded

    depth_factor = rng.uniform(near, far)
    offset = rng.uniform(-1.0, 1.0, 2) * 0.12 * pose.translation[2]
    t = np.asarray(pose.translation, np.float64) * depth_factor
    t[:2] += offset
    other_pose = Pose(sample_pose(rng, sampler).rotation, t)
    return render_shaded(other.vertices, other.faces, other_pose, camera, random_material(rng),
                         random_lighting(rng), background, vertex_normals=other.normals)


def render_batch(meshes: list[ViewMesh], sampler: ViewSampler, seed: int, index: int,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return batch number `index` of the stream defined by `seed`: images (size, H, W, 3)
    uint8 and labels (size, H, W) uint8. Each view draws its mesh uniformly from `meshes`.
    The batch depends only on (seed, index, meshes, sampler), not on who renders it."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    images = np.empty((size, sampler.height, sampler.width, 3), np.uint8)
    labels = np.empty((size, sampler.height, sampler.width), np.uint8)
    for k in range(size):
        mesh = meshes[int(rng.integers(len(meshes)))]
        images[k], labels[k] = render_view(mesh, sampler, rng)
    return images, labels


def render_fixed_set(meshes: list[ViewMesh], sampler: ViewSampler, seed: int,
                     count: int) -> tuple[np.ndarray, np.ndarray]:
    """Return a fixed, seeded set of `count` views cycling through `meshes` in order (every
    mesh seen equally often): images (count, H, W, 3) uint8, labels (count, H, W) uint8."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    images = np.empty((count, sampler.height, sampler.width, 3), np.uint8)
    labels = np.empty((count, sampler.height, sampler.width), np.uint8)
    for k in range(count):
        images[k], labels[k] = render_view(meshes[k % len(meshes)], sampler, rng)
    return images, labels


def _worker_main(scene_path, seed, batch_size, start, stride, out_queue, stop) -> None:
    """Render batches start, start + stride, ... into `out_queue` as (index, images, labels,
    seconds) until `stop` is set. Runs in a spawned process with its own GL context; the meshes
    and the sampler come from the pickle at `scene_path` (written by the parent: large
    arguments in the spawn pipe would block the parent if the child dies early)."""
    index = start
    parent = mp.parent_process()

    def running() -> bool:  # a killed parent does not set `stop`: exit with it
        return not stop.is_set() and (parent is None or parent.is_alive())

    try:
        with open(scene_path, "rb") as fh:
            meshes, sampler = pickle.load(fh)
        while running():
            t0 = time.perf_counter()
            images, labels = render_batch(meshes, sampler, seed, index, batch_size)
            item = (index, images, labels, time.perf_counter() - t0)
            while running():
                try:
                    out_queue.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            index += stride
    except KeyboardInterrupt:
        return
    except Exception as exc:  # report to the parent instead of dying silently
        out_queue.put(("error", f"{type(exc).__name__}: {exc}", None, 0.0))
    finally:
        # Items nobody will read must not keep this process alive at exit.
        out_queue.cancel_join_thread()
        if parent is not None and not parent.is_alive():  # killed parent: clean up for it
            with contextlib.suppress(OSError):
                os.unlink(scene_path)


class BatchStream:
    """Training batches in order 0, 1, 2, ... (starting at `start`).

    With `workers` >= 1 they are rendered ahead by that many spawned processes (each with its
    own headless GL context; the GL context of the main process is not shared), up to
    `prefetch` batches per worker; with `workers` = 0 on the calling thread when asked.
    `render_seconds` sums the rendering time of the batches consumed so far.
    """

    def __init__(self, meshes: list[ViewMesh], sampler: ViewSampler, seed: int,
                 batch_size: int, start: int = 0, workers: int = 1, prefetch: int = 3):
        self.meshes, self.sampler, self.seed = meshes, sampler, seed
        self.batch_size, self.next_index, self.workers = batch_size, start, workers
        self.render_seconds = 0.0
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._procs: list = []
        if workers > 0:
            ctx = mp.get_context("spawn")
            fd, self._scene_path = tempfile.mkstemp(prefix="regtool-views-", suffix=".pkl")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump((meshes, sampler), fh, protocol=pickle.HIGHEST_PROTOCOL)
            self._stop = ctx.Event()
            self._queue = ctx.Queue(maxsize=prefetch * workers)
            for w in range(workers):
                p = ctx.Process(target=_worker_main, daemon=True,
                                args=(self._scene_path, seed, batch_size, start + w, workers,
                                      self._queue, self._stop))
                p.start()
                self._procs.append(p)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the next batch (images (B, H, W, 3) uint8, labels (B, H, W) uint8);
        RenderError if a render worker failed or died."""
        index = self.next_index
        self.next_index += 1
        if self.workers == 0:
            t0 = time.perf_counter()
            batch = render_batch(self.meshes, self.sampler, self.seed, index, self.batch_size)
            self.render_seconds += time.perf_counter() - t0
            return batch
        while index not in self._pending:
            try:
                got, images, labels, seconds = self._queue.get(timeout=5.0)
            except queue.Empty:
                if not any(p.is_alive() for p in self._procs):
                    raise RenderError(
                        "the render worker process died (see its output above; a script "
                        "calling train_unet must guard its main code with "
                        "`if __name__ == '__main__':`, as multiprocessing spawn requires)"
                    ) from None
                continue
            if got == "error":
                raise RenderError(f"render worker failed: {images}")
            self.render_seconds += seconds
            self._pending[got] = (images, labels)
        return self._pending.pop(index)

    def close(self) -> None:
        """Stop and join the worker processes."""
        if not self._procs:
            return
        self._stop.set()
        for p in self._procs:
            p.join(timeout=5.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
        self._queue.close()
        self._queue.cancel_join_thread()
        self._procs = []
        os.unlink(self._scene_path)

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
