"""Writers for the result of one registration (`regtool register`).

A result folder holds:

* ``deformed.ply`` and ``deformed.obj`` -- the deformed canonical mesh, same vertex order and
  faces as the canonical (so vertex ids, grasp points and labels carry over), in the units of the
  shape space (metres for the built-in data), object frame;
* ``result.json`` -- latent code z, final (and initial) object -> camera pose per view, loss per
  iteration, timings, software versions (regtool, torch, numpy, GL renderer), the config;
* ``overlay.png`` -- per view one row: observation | final rendering | 50/50 blend with the
  silhouette outline of the observed mask (green) and of the rendered mask (magenta), with
  panel titles and a legend (`figures.overlay_figure`);
* ``optimisation.gif`` -- the frames of the optimisation given by the caller (optional; from
  `register`: the same figure for the first view with the iteration and loss on each frame).

All files of one call appear together or not at all, and replace those of an earlier call as a
whole, also when the process is killed: they are written into a hidden staging folder and
published by one rename (`regtool.io.staged_output`; each file is a symbolic link into the
hidden folder `.regtool-sets/registration` of the output folder). Other files already in the
output folder are left alone.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from scipy import ndimage

from regtool.errors import RegistrationError
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.geometry.mesh import save_mesh, validate_mesh
from regtool.io import json_bytes, staged_output, to_jsonable

OBSERVED_OUTLINE_RGB = (0, 255, 0)  # green: silhouette of the observed (segmented) object
RENDERED_OUTLINE_RGB = (255, 0, 255)  # magenta: silhouette of the final rendering

MESH_PLY = "deformed.ply"
MESH_OBJ = "deformed.obj"
RESULT_JSON = "result.json"
OVERLAY_PNG = "overlay.png"
OPTIMISATION_GIF = "optimisation.gif"


# --- JSON helpers ----------------------------------------------------------------------------

def software_versions(gl_renderer: str | None = None) -> dict[str, str | None]:
    """Return {"regtool", "torch", "numpy", "python", "gl_renderer"} version strings; the GL
    renderer string (e.g. from `GLContext.info()["renderer"]`) is given by the caller."""
    import torch

    import regtool

    return {"regtool": regtool.__version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
            "gl_renderer": gl_renderer}


# --- images ----------------------------------------------------------------------------------

def to_uint8_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return (H, W, 3) uint8 from an (H, W), (H, W, 3) or (H, W, 4) image that is uint8 or
    float in [0, 1] (clipped; alpha dropped); RegistrationError if mis-shaped or non-finite."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise RegistrationError(f"{name}: expected an (H, W, 3) image, got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
        raise RegistrationError(f"{name}: NaN or infinite pixel values")
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def mask_outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Return (H, W) bool: the pixels of `mask` (H, W) within `thickness` pixels of its border
    (pixels outside the image count as background, so a mask touching the border is closed)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def overlay_image(observed: np.ndarray, rendered: np.ndarray, rendered_mask: np.ndarray,
                  observed_mask: np.ndarray | None = None, alpha: float = 0.5,
                  thickness: int = 1) -> np.ndarray:
    """Return an (H, 3W, 3) uint8 image: observation | rendering | blend.

    The blend is ``(1 - alpha) * observation + alpha * rendering`` with the outline of
    `observed_mask` in green (`OBSERVED_OUTLINE_RGB`, skipped when None) and of `rendered_mask`
    in magenta (`RENDERED_OUTLINE_RGB`, drawn on top). Images are (H, W, 3) float in [0, 1] or
    uint8; masks (H, W) bool. RegistrationError if the sizes disagree.
    """
    obs = to_uint8_rgb(observed, "observed image")
    ren = to_uint8_rgb(rendered, "rendered image")
    if obs.shape != ren.shape:
        raise RegistrationError(f"observed image {obs.shape[1]}x{obs.shape[0]} and rendering "
                                f"{ren.shape[1]}x{ren.shape[0]} differ in size")
    blend = np.round((1.0 - alpha) * obs + alpha * ren).astype(np.uint8)
    for mask, colour, what in ((observed_mask, OBSERVED_OUTLINE_RGB, "observed mask"),
                               (rendered_mask, RENDERED_OUTLINE_RGB, "rendered mask")):
        if mask is None:
            continue
        mask = np.asarray(mask)
        if mask.shape != obs.shape[:2]:
            raise RegistrationError(f"{what}: shape {mask.shape} differs from the image "
                                    f"{obs.shape[:2]}")
        blend[mask_outline(mask > 0, thickness)] = colour
    return np.concatenate([obs, ren, blend], axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    """Return the PNG encoding of an (H, W, 3) image (uint8, or float in [0, 1])."""
    return iio.imwrite("<bytes>", to_uint8_rgb(image), extension=".png")


def gif_bytes(frames: Sequence[np.ndarray], fps: float = 5.0) -> bytes:
    """Return an endlessly looping GIF of `frames` (each (H, W, 3) uint8 or float in [0, 1],
    all the same size) at `fps` frames per second (GIF quantises to 256 colours per frame;
    Pillow merges identical consecutive frames into one longer frame).

    RegistrationError if there are no frames or their sizes differ.
    """
    if len(frames) == 0:
        raise RegistrationError("optimisation GIF: no frames")
    if not fps > 0:
        raise RegistrationError(f"optimisation GIF: fps must be positive, got {fps}")
    stack = [to_uint8_rgb(f, f"GIF frame {i}") for i, f in enumerate(frames)]
    for i, f in enumerate(stack):
        if f.shape != stack[0].shape:
            raise RegistrationError(f"optimisation GIF: frame {i} is {f.shape[1]}x{f.shape[0]}, "
                                    f"frame 0 is {stack[0].shape[1]}x{stack[0].shape[0]}")
    return iio.imwrite("<bytes>", np.stack(stack), extension=".gif",
                       duration=int(round(1000.0 / fps)), loop=0)


# --- one registration ------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewResult:
    """One observed view of a registration and its final rendering.

    observed: (H, W, 3) float32 in [0, 1] (or uint8), the observed image as registered.
    rendered: (H, W, 3) same size, the rendering of the final deformed mesh at `pose`.
    rendered_mask: (H, W) bool, pixels covered by the final rendering.
    pose: final object -> camera pose (OpenCV camera frame, metres).
    camera: the intrinsics of this view.
    initial_pose: the pose registration started from (None: not recorded).
    observed_mask: (H, W) bool, the object region of the observation (given mask or the
        U-Net's segmentation), or None.
    image_path: where the observation was read from, recorded in result.json.
    """

    observed: np.ndarray
    rendered: np.ndarray
    rendered_mask: np.ndarray
    pose: Pose
    camera: CameraIntrinsics
    initial_pose: Pose | None = None
    observed_mask: np.ndarray | None = None
    image_path: str | None = None


def result_record(z: np.ndarray, views: Sequence[ViewResult], losses: Sequence[float],
                  timings: Mapping[str, Any] | None = None,
                  versions: Mapping[str, Any] | None = None, config: Any = None,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the `result.json` content (plain JSON types).

    Keys: "z" (latent code, list), "pose" (final pose of the first view, `Pose.to_dict`),
    "views" (per view: image, camera, initial_pose, pose), "losses" (per iteration, None where
    non-finite), "iterations", "final_loss", "best_loss", "best_iteration" (0-based), "timings"
    (seconds), "versions", "config", "overlay_colours", then the keys of `extra` (which must not
    collide with these). RegistrationError if z is not a finite 1-D vector or there is no view.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1 or not np.isfinite(z).all():
        raise RegistrationError(f"latent code z must be a finite vector, got shape {z.shape}")
    if len(views) == 0:
        raise RegistrationError("a registration result needs at least one view")
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    finite = np.isfinite(loss)
    best = int(np.argmin(np.where(finite, loss, np.inf))) if finite.any() else None
    record: dict[str, Any] = {
        "z": z,
        "pose": views[0].pose,
        "views": [{"image": v.image_path, "camera": v.camera, "initial_pose": v.initial_pose,
                   "pose": v.pose} for v in views],
        "losses": loss,
        "iterations": len(loss),
        "final_loss": loss[-1] if len(loss) else None,
        "best_loss": loss[best] if best is not None else None,
        "best_iteration": best,
        "timings": dict(timings or {}),
        "versions": dict(versions or {}),
        "config": config,
        "overlay_colours": {"observed_outline": list(OBSERVED_OUTLINE_RGB),
                            "rendered_outline": list(RENDERED_OUTLINE_RGB)},
    }
    for key, value in (extra or {}).items():
        if key in record:
            raise ValueError(f"extra key '{key}' collides with a result.json key")
        record[key] = value
    return to_jsonable(record)


def write_registration(out_dir: Path, *, vertices: np.ndarray, faces: np.ndarray,
                       z: np.ndarray, views: Sequence[ViewResult], losses: Sequence[float],
                       frames: Sequence[np.ndarray] | None = None,
                       timings: Mapping[str, Any] | None = None,
                       versions: Mapping[str, Any] | None = None, config: Any = None,
                       extra: Mapping[str, Any] | None = None,
                       gif_fps: float = 5.0) -> dict[str, Path]:
    """Write one registration into `out_dir` (created if needed) and return {file name: path}.

    vertices: (V, 3) deformed canonical vertices, object frame, shape-space units; faces:
    (F, 3) the canonical's faces. Files: deformed.ply, deformed.obj, result.json
    (`result_record`), overlay.png (the `overlay_image` rows of all views stacked vertically),
    and optimisation.gif when `frames` is given (`gif_fps` frames per second).

    Every file is built before any is moved into `out_dir` (`staged_output`): if anything fails
    (bad input -> MeshError / RegistrationError, unwritable folder -> OutputError) `out_dir` holds
    no new or partial file.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    validate_mesh(vertices, faces, "deformed mesh")
    record = result_record(z, views, losses, timings, versions, config, extra)
    from regtool.registration.figures import overlay_figure  # figures draws on this module

    rows = [overlay_figure(v.observed, v.rendered, v.rendered_mask, v.observed_mask,
                           f"view {i + 1} of {len(views)}" if len(views) > 1 else None)
            for i, v in enumerate(views)]
    if len({r.shape[1] for r in rows}) > 1:
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    overlay = png_bytes(np.concatenate(rows, axis=0))
    gif = gif_bytes(frames, gif_fps) if frames is not None else None
    record["files"] = [MESH_PLY, MESH_OBJ, RESULT_JSON, OVERLAY_PNG] + \
        ([OPTIMISATION_GIF] if gif is not None else [])
    payload = json_bytes(record)

    with staged_output(out_dir, "registration") as stage:
        save_mesh(stage / MESH_PLY, vertices, faces)
        save_mesh(stage / MESH_OBJ, vertices, faces)
        (stage / OVERLAY_PNG).write_bytes(overlay)
        if gif is not None:
            (stage / OPTIMISATION_GIF).write_bytes(gif)
        (stage / RESULT_JSON).write_bytes(payload)
    return {name: Path(out_dir) / name for name in record["files"]}
