"""Any image size: bring an observation to the scale the U-Net was trained at.

The U-Net learned objects at its training views' scale: a `fov_y_deg` camera of
`image_size` pixels with the object at `distance` metres (+- the distance jitter). A 640x480 or
1280x960 photo of the same scene shows the object 4-8x larger in pixels, and the network's
segmentation and features degrade (measured: IoU 0.52 at 320x240 for a 160x120 network). So the
observation is resampled by the factor that gives the object (at its initial pose's depth) the
training scale, and the training-size window centred on the object's projected box is cut out
(edge-replicated where it leaves the image). The camera follows exactly: the intrinsics are
scaled and shifted with the pixels, the pose (camera frame) is unchanged, so the registered
pose and shape are those of the original image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from regtool.geometry.camera import CameraIntrinsics, Pose

NO_RESAMPLE_RANGE = (0.8, 1.25)  # scale factors a training-size image is kept unchanged within
MAX_UPSAMPLE = 2.0  # warn: the object is under half the training scale, details are lost
MIN_OBJECT_PX = 12.0  # warn: the object spans fewer pixels than this in the original image


@dataclass(frozen=True)
class NetworkScale:
    """The U-Net's training scale: image size (W, H) pixels, vertical field of view (degrees)
    and working distance (metres) of its training views."""

    image_size: tuple[int, int]
    fov_y_deg: float
    distance: float

    @classmethod
    def from_meta(cls, meta: dict, fov_y_deg: float, distance: float) -> "NetworkScale":
        """Return the scale of a U-Net checkpoint's metadata (`image_size`, and its `render`
        section's fov and distance when recorded, else the given ones)."""
        render = meta.get("render") or {}
        w, h = meta["image_size"]
        return cls((int(w), int(h)), float(render.get("fov_y_deg", fov_y_deg)),
                   float(render.get("distance", distance)))

    def pixels_per_radian(self) -> float:
        """Return the training camera's focal length in pixels."""
        return 0.5 * self.image_size[1] / math.tan(math.radians(self.fov_y_deg) / 2.0)


@dataclass(frozen=True)
class NetworkView:
    """An observation at the network's scale: `image` (h, w, 3) float32, its `camera`, the
    resampled `mask` (or None), the factors (sx, sy) = new pixels per original pixel, the
    window's top-left corner `offset` (x0, y0) in the resampled image (pixels), whether the
    image was `resampled` at all, and `warnings` (one line each)."""

    image: np.ndarray
    camera: CameraIntrinsics
    mask: np.ndarray | None
    scale: tuple[float, float]
    offset: tuple[int, int]
    resampled: bool
    warnings: tuple[str, ...]

    def record(self) -> dict:
        """Return the JSON record of the resampling (result.json `network_view`)."""
        return {"resampled": self.resampled, "scale": list(self.scale),
                "offset": list(self.offset),
                "size": [self.camera.width, self.camera.height]}


def projected_box(vertices: np.ndarray, camera: CameraIntrinsics, pose: Pose
                  ) -> tuple[float, float, float, float]:
    """Return the bounding box (u0, v0, u1, v1) in pixels of `vertices` (V, 3), object frame,
    projected at `pose` (points at or behind z = 1e-6 ignored)."""
    pts = np.asarray(vertices, np.float64) @ pose.rotation.T + pose.translation
    pts = pts[pts[:, 2] > 1e-6]
    u = camera.fx * pts[:, 0] / pts[:, 2] + camera.cx
    v = camera.fy * pts[:, 1] / pts[:, 2] + camera.cy
    return float(u.min()), float(v.min()), float(u.max()), float(v.max())


def network_view(image: np.ndarray, camera: CameraIntrinsics, pose: Pose,
                 vertices: np.ndarray, scale: NetworkScale,
                 mask: np.ndarray | None = None) -> NetworkView:
    """Return the observation `image` (H, W, 3) float in [0, 1] seen by `camera`, with the
    object (`vertices` (V, 3) in metres, object frame) at initial `pose`, at the network's
    `scale` (see the module docstring). An image of the training size whose object is within
    NO_RESAMPLE_RANGE of the training scale is returned unchanged (the same numbers as without
    this step). `mask` (H, W) bool is resampled with the image (area share >= 0.5)."""
    from regtool.render.clutter import resize

    width, height = scale.image_size
    depth = float(pose.translation[2])
    target = scale.pixels_per_radian() / scale.distance  # pixels per metre at the object
    sx = target / (camera.fx / depth)
    sy = target / (camera.fy / depth)
    box = projected_box(vertices, camera, pose)
    warnings = _warnings(camera, box, sx, sy, scale)
    lo, hi = NO_RESAMPLE_RANGE
    if (camera.width, camera.height) == (width, height) and lo <= sx <= hi and lo <= sy <= hi:
        return NetworkView(np.asarray(image, np.float32), camera, mask, (1.0, 1.0), (0, 0),
                           False, warnings)
    new_w = max(1, int(round(camera.width * sx)))
    new_h = max(1, int(round(camera.height * sy)))
    scaled = camera.scaled(new_w, new_h)
    big = resize(np.asarray(image, np.float32), new_h, new_w)
    big_mask = None if mask is None else \
        resize(np.asarray(mask, np.float32)[..., None], new_h, new_w)[..., 0] >= 0.5
    fx, fy = new_w / camera.width, new_h / camera.height
    uc, vc = 0.5 * (box[0] + box[2]) * fx, 0.5 * (box[1] + box[3]) * fy
    x0 = _window_start(uc, width, new_w)
    y0 = _window_start(vc, height, new_h)
    out = _cut(big, x0, y0, width, height)
    out_mask = None if big_mask is None else _cut(big_mask[..., None], x0, y0, width,
                                                  height)[..., 0]
    cam = CameraIntrinsics(scaled.fx, scaled.fy, scaled.cx - x0, scaled.cy - y0, width, height)
    return NetworkView(np.clip(out, 0.0, 1.0).astype(np.float32), cam, out_mask, (fx, fy),
                       (x0, y0), True, warnings)


def _window_start(centre: float, size: int, total: int) -> int:
    """Return the first pixel of a `size` window centred at `centre`, shifted to lie inside
    [0, total) when the image is at least as large as the window."""
    start = int(round(centre - size / 2.0))
    if total < size:
        return start
    return min(max(start, 0), total - size)


def _cut(img: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Return img[y0:y0+height, x0:x0+width], edge-replicated where it leaves the image."""
    h, w = img.shape[:2]
    ys = np.clip(np.arange(y0, y0 + height), 0, h - 1)
    xs = np.clip(np.arange(x0, x0 + width), 0, w - 1)
    return img[ys[:, None], xs[None, :]]


def _warnings(camera: CameraIntrinsics, box: tuple[float, float, float, float], sx: float,
              sy: float, scale: NetworkScale) -> tuple[str, ...]:
    """Return the warnings about the object's size in the image (see network_view)."""
    out = []
    span = max(box[2] - box[0], box[3] - box[1])
    width, height = scale.image_size
    if span < MIN_OBJECT_PX or max(sx, sy) > MAX_UPSAMPLE:
        out.append(f"the object spans only about {span:.0f} px in the {camera.width}x"
                   f"{camera.height} image, {1 / max(sx, sy):.2f}x the scale the U-Net was "
                   f"trained at: it is upsampled {max(sx, sy):.1f}x and fine shape detail is "
                   f"lost (too small to register well: move closer or use a larger image)")
    if (box[2] - box[0]) * sx > width or (box[3] - box[1]) * sy > height:
        out.append(f"the object is too large for the U-Net's {width}x{height} view even at "
                   f"its training scale: part of it is cut off")
    inside_u = (min(box[2], camera.width) - max(box[0], 0.0)) / max(box[2] - box[0], 1e-9)
    inside_v = (min(box[3], camera.height) - max(box[1], 0.0)) / max(box[3] - box[1], 1e-9)
    if min(inside_u, inside_v) < 0.9:
        out.append(f"the object at the initial pose reaches beyond the image's border (only "
                   f"{100 * max(min(inside_u, inside_v), 0):.0f} % of its extent inside): too "
                   f"large or off-centre to register well, the part outside cannot be compared")
    return tuple(out)
