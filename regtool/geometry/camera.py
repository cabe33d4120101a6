"""Pinhole cameras and rigid poses.

Frames:
* object frame: the category frame of the dataset, metres (z up for the built-in categories).
* camera frame: OpenCV convention, x right, y down, z forward (looking along +z), metres.
* pixel frame: (u, v) with u to the right and v downwards, origin at the top-left corner of the
  top-left pixel, so pixel (i, j) covers [j, j+1) x [i, i+1) and has its centre at (j+.5, i+.5).
  This matches pyrender's `IntrinsicsCamera`, whose projection is derived here in one place.
* GL camera frame: x right, y up, z backwards = diag(1, -1, -1) applied to the camera frame.

A pose is object -> camera: X_cam = R @ X_obj + t.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from regtool.errors import GeometryError

# Rotation from the OpenCV camera frame to the GL camera frame (and back: it is its own inverse).
CV_TO_GL = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class CameraIntrinsics:
    """OpenCV-style intrinsics in pixels; `width` x `height` is the image size."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_fov(cls, width: int, height: int, fov_y_deg: float) -> "CameraIntrinsics":
        """Return a centred camera with the given vertical field of view (square pixels)."""
        f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2.0)
        return cls(fx=f, fy=f, cx=width / 2.0, cy=height / 2.0, width=width, height=height)

    def scaled(self, width: int, height: int) -> "CameraIntrinsics":
        """Return the same camera for an image resized to `width` x `height`."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy,
                                width, height)

    def matrix(self) -> np.ndarray:
        """Return K (3, 3) float64."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def gl_projection(self, znear: float = 0.01, zfar: float = 100.0) -> np.ndarray:
        """Return the (4, 4) GL projection matrix (GL camera frame -> clip space), identical to
        pyrender's `IntrinsicsCamera.get_projection_matrix`."""
        w, h = float(self.width), float(self.height)
        p = np.zeros((4, 4))
        p[0, 0] = 2.0 * self.fx / w
        p[1, 1] = 2.0 * self.fy / h
        p[0, 2] = 1.0 - 2.0 * self.cx / w
        p[1, 2] = 2.0 * self.cy / h - 1.0
        p[2, 2] = (zfar + znear) / (znear - zfar)
        p[2, 3] = 2.0 * zfar * znear / (znear - zfar)
        p[3, 2] = -1.0
        return p

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "camera") -> "CameraIntrinsics":
        """Return intrinsics from a dict with fx, fy, cx, cy, width, height; GeometryError
        naming the field if one is missing, non-numeric, non-finite or non-positive."""
        values = {}
        for key in ("fx", "fy", "cx", "cy", "width", "height"):
            if key not in data:
                raise GeometryError(f"{source}: missing field '{key}'")
            values[key] = float(json_numbers(data[key], (), f"{source}: field '{key}'"))
        for key in ("fx", "fy", "width", "height"):
            if values[key] <= 0:
                raise GeometryError(f"{source}: field '{key}' must be positive")
        for key in ("width", "height"):
            if int(values[key]) != values[key]:
                raise GeometryError(f"{source}: field '{key}' must be an integer")
        return cls(float(values["fx"]), float(values["fy"]), float(values["cx"]),
                   float(values["cy"]), int(values["width"]), int(values["height"]))


def skew(v: torch.Tensor) -> torch.Tensor:
    """Return the (..., 3, 3) cross-product matrices of vectors (..., 3)."""
    zero = torch.zeros_like(v[..., 0])
    return torch.stack([
        torch.stack([zero, -v[..., 2], v[..., 1]], -1),
        torch.stack([v[..., 2], zero, -v[..., 0]], -1),
        torch.stack([-v[..., 1], v[..., 0], zero], -1),
    ], -2)


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Return rotation matrices (..., 3, 3) of axis-angle vectors (..., 3) in radians (Rodrigues).

    Differentiable everywhere, including at the zero rotation (Taylor expansion below 1e-4 rad).
    """
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]
    small = theta2 < 1e-8
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(theta2_safe)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    k = skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a * k + b * (k @ k)


@dataclass(frozen=True)
class Pose:
    """Rigid object -> camera transform (OpenCV camera frame), metres."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    @classmethod
    def identity(cls) -> "Pose":
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def look_at(cls, distance: float, azimuth_deg: float = 0.0, elevation_deg: float = 0.0,
                roll_deg: float = 0.0, target: np.ndarray | None = None) -> "Pose":
        """Return the pose of a camera on a sphere of radius `distance` around `target` (object
        frame, z up), looking at it; azimuth about +z from +x, elevation above the xy-plane."""
        target = np.zeros(3) if target is None else np.asarray(target, dtype=float)
        az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
        eye = target + distance * np.array([math.cos(el) * math.cos(az),
                                            math.cos(el) * math.sin(az), math.sin(el)])
        forward = target - eye
        forward /= np.linalg.norm(forward)
        up = np.array([0.0, 0.0, 1.0])
        if abs(forward @ up) > 0.999:
            up = np.array([0.0, 1.0, 0.0])
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        r_cam_to_obj = np.stack([right, down, forward], axis=1)  # columns: camera axes in object
        r = r_cam_to_obj.T
        if roll_deg:
            c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
            r = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ r
        return cls(r, -r @ eye)

    def matrix(self) -> np.ndarray:
        """Return the (4, 4) homogeneous object -> camera matrix."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation
        return m

    def compose(self, delta_rotvec: np.ndarray, delta_translation: np.ndarray) -> "Pose":
        """Return the pose with an increment in the camera frame that rotates the object about
        its own origin: R' = Exp(delta_rotvec) R, t' = t + delta_translation."""
        dr = axis_angle_to_matrix(torch.as_tensor(delta_rotvec, dtype=torch.float64)).numpy()
        return Pose(dr @ self.rotation, self.translation + np.asarray(delta_translation, float))

    def to_dict(self) -> dict:
        return {"frame": "object_to_camera_opencv", "units": "m",
                "rotation": self.rotation.tolist(), "translation": self.translation.tolist()}

    @classmethod
    def from_dict(cls, data: dict, source: str = "pose") -> "Pose":
        """Return a pose from {"rotation": 3x3 | "rotvec": [3], "translation": [3]};
        GeometryError naming the field if missing, mis-shaped, non-finite or not a rotation."""
        if "translation" not in data:
            raise GeometryError(f"{source}: missing field 'translation'")
        t = json_numbers(data["translation"], (3,), f"{source}: field 'translation'")
        if "rotation" in data:
            r = json_numbers(data["rotation"], (3, 3), f"{source}: field 'rotation'")
            if (np.abs(r.T @ r - np.eye(3)).max() > 1e-4 or np.linalg.det(r) < 0):
                raise GeometryError(f"{source}: field 'rotation' is not a rotation matrix")
        elif "rotvec" in data:
            rv = json_numbers(data["rotvec"], (3,), f"{source}: field 'rotvec'")
            r = axis_angle_to_matrix(torch.as_tensor(rv)).numpy()
        else:
            raise GeometryError(f"{source}: missing field 'rotation' (or 'rotvec')")
        return cls(r, t)


def json_numbers(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Return `value`, JSON numbers nested in lists of `shape` (`()`: one number), as a float64
    array of that shape; GeometryError naming `what` if it has another shape, holds anything
    but numbers (strings and booleans are refused, not converted) or a non-finite value (an
    integer too large for a float counts as infinite).

    The one number check of every camera and pose field."""
    def walk(v, dims: tuple[int, ...]):
        if dims:
            if not isinstance(v, (list, tuple)) or len(v) != dims[0]:
                raise GeometryError(f"{what} must have shape {shape}, got {_short(value)}")
            return [walk(x, dims[1:]) for x in v]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            noun = "a finite number" if not shape else "numbers"
            raise GeometryError(f"{what} must be {noun}, got {_short(v)}")
        try:
            return float(v)
        except OverflowError:
            return math.inf

    arr = np.asarray(walk(value, tuple(shape)), dtype=np.float64).reshape(shape)
    if not np.isfinite(arr).all():
        raise GeometryError(f"{what} must be a finite number, got {_short(value)}"
                                if not shape else f"{what} has non-finite values")
    return arr


def _short(value, limit: int = 40) -> str:
    """Return repr(value) cut to `limit` characters (a 400-digit number stays one line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
