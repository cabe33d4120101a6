"""Randomised training views for the U-Net, rendered headless with `render_shaded`.

A view: a mesh of a category seen from a random direction (rotation uniform over SO(3), i.e.
any point of the view sphere and any roll) at the working distance (jittered), shifted so its
origin projects anywhere in the central half of the image, under random lights, with a random
object material and a random background (flat, gradient, noise or a crop of a user image).
Labels: 0 background, k >= 1 the 1-based category index, per pixel.

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
    as bytes: the sampler is sent to every render worker)."""

    width: int
    height: int
    fov_y_deg: float
    distance: float
    distance_jitter: float
    backgrounds: tuple[np.ndarray, ...] = ()


def load_backgrounds(folder: Path | None, max_images: int = 64,
                     max_side: int = 640) -> tuple[np.ndarray, ...]:
    """Return the images in `folder` (sorted by name, at most `max_images`) as (H, W, 3)
    uint8 RGB, downscaled so the longer side is <= `max_side`; () for None.
    DatasetError if the folder is missing or holds no readable image."""
    if folder is None:
        return ()
    import imageio.v3 as iio

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"backgrounds folder not found: {folder}")
    images: list[np.ndarray] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or len(images) >= max_images:
            continue
        try:
            with warnings.catch_warnings():  # imageio warns while probing unreadable files
                warnings.simplefilter("ignore")
                img = np.asarray(iio.imread(path))
        except Exception:  # unreadable files are skipped; an empty result is an error below
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] < 3:
            continue
        img = img[..., :3]
        if img.dtype != np.uint8:
            scale = 255.0 / (65535.0 if img.dtype == np.uint16 else max(float(img.max()), 1.0))
            img = np.clip(img.astype(np.float64) * scale + 0.5, 0, 255).astype(np.uint8)
        step = int(math.ceil(max(img.shape[:2]) / max_side))
        images.append(np.ascontiguousarray(img[::step, ::step]))
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
    from regtool.render.shading import (
        random_background,
        random_lighting,
        random_material,
        render_shaded,
    )

    camera = CameraIntrinsics.from_fov(sampler.width, sampler.height, sampler.fov_y_deg)
    pose = sample_pose(rng, sampler) if pose is None else pose
    material = random_material(rng)
    lighting = random_lighting(rng)
    images = None
    if sampler.backgrounds:  # convert only the one image random_background may crop
        pick = sampler.backgrounds[int(rng.integers(len(sampler.backgrounds)))]
        images = [pick.astype(np.float32) / 255.0]
    background = random_background(rng, sampler.height, sampler.width, images)
    img = render_shaded(mesh.vertices, mesh.faces, pose, camera, material, lighting, background,
                        vertex_normals=mesh.normals)
    rgb = np.clip(img.rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    label = np.where(img.alpha >= 0.5, mesh.label, 0).astype(np.uint8)
    return rgb, label


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
