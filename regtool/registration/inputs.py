"""Readers for the inputs of `regtool register`: observed image, object mask, camera, pose.

Every reader raises `RegistrationError` with a one-line message naming the file (and the field)
when the input is missing, malformed or inconsistent.

Images (`read_image`)
    Any file imageio reads (PNG, JPG, ...). 8- and 16-bit integer, bool and float ([0, 1])
    pixels. Grey -> copied to 3 channels; grey + alpha and RGBA -> alpha dropped; any other
    channel count (e.g. a 5-channel TIFF) is refused. The result is (H, W, 3) float32 in [0, 1],
    row 0 at the top. When the camera expects another size the image is resized to it (bilinear,
    anti-aliased) only if resizing is allowed; otherwise it is refused with a message saying so.

Masks (`read_mask`)
    A grey or colour image of the same size; object = mean of the colour channels > 0.5 of full
    scale (alpha ignored). Empty masks are refused.

Camera JSON (`read_camera`), OpenCV intrinsics in pixels (see `configs/examples/camera.json`)::

    {"fx": 329.7, "fy": 329.7, "cx": 160.0, "cy": 120.0, "width": 320, "height": 240}

    fx, fy > 0; width, height positive integers = the image size in pixels; the pixel frame has
    its origin at the top-left corner of the top-left pixel (`regtool.geometry.camera`). Other
    keys (e.g. "comment") are ignored.

A pose must show the object (`check_pose_in_view`): every vertex of the starting shape in front
of the near plane and its projection overlapping the image; otherwise registration has no
gradient to follow and is refused before any optimisation.

Pose JSON (`read_pose`), object -> camera, OpenCV camera frame (x right, y down, z forward;
X_cam = R @ X_obj + t), see `configs/examples/pose.json`::

    {"rotation": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],   # or "rotvec": [rx, ry, rz] in radians
     "translation": [0.0, 0.0, 0.6],
     "units": "m",                                   # optional: "m" (default), "cm" or "mm"
     "frame": "object_to_camera_opencv"}             # optional; no other frame is accepted

    The translation is converted from "units" to the units asked for (the shape space's, metres
    for the built-in data). This is the format `Pose.to_dict` writes. Numbers must be JSON
    numbers in both files (one check, `geometry.camera.json_numbers`): "0.6" is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from regtool.errors import RegistrationError
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.io import read_json
from regtool.units import UNITS_TO_METRES

LENGTH_UNITS = UNITS_TO_METRES  # metres per unit of the length units of input files
POSE_FRAME = "object_to_camera_opencv"


def length_scale(from_units: str, to_units: str, source: str) -> float:
    """Return the factor converting lengths in `from_units` to `to_units` (m, cm or mm);
    RegistrationError naming `source` for an unknown unit."""
    for u in (from_units, to_units):
        if u not in LENGTH_UNITS:
            raise RegistrationError(f"{source}: unknown length unit {u!r} "
                                    f"(known: {', '.join(LENGTH_UNITS)})")
    return LENGTH_UNITS[from_units] / LENGTH_UNITS[to_units]


def load_image(path: Path, what: str = "image") -> np.ndarray:
    """Return the image in `path` as (H, W, 3) float32 in [0, 1] at its own size (channel rules
    in the module docstring); RegistrationError if missing, unreadable or of a refused layout."""
    path = Path(path)
    if not path.is_file():
        raise RegistrationError(f"{what} file not found: {path}")
    try:
        with warnings.catch_warnings():
            # imageio probes every plugin on an unknown file; some warn they are deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            img = iio.imread(path)
    except Exception as exc:  # imageio raises OSError, ValueError, plugin errors ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistrationError(f"cannot read {what} {path}: {first}") from exc
    img = np.asarray(img)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 4:
        raise RegistrationError(f"{what} {path} holds {img.shape[0]} frames; expected one image")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise RegistrationError(f"{what} {path}: unsupported array shape {img.shape}")
    channels = img.shape[2]
    if channels not in (1, 2, 3, 4):
        raise RegistrationError(f"{what} {path} has {channels} channels; expected grey (1), "
                                f"grey+alpha (2), RGB (3) or RGBA (4)")
    colour = img[:, :, :1] if channels <= 2 else img[:, :, :3]
    rgb = _to_unit_float(colour, f"{what} {path}")
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _to_unit_float(img: np.ndarray, name: str) -> np.ndarray:
    if img.dtype == np.bool_:
        return img.astype(np.float32)
    if np.issubdtype(img.dtype, np.integer):
        if img.dtype.itemsize > 2 or np.issubdtype(img.dtype, np.signedinteger):
            raise RegistrationError(f"{name}: unsupported pixel type {img.dtype} "
                                    f"(expected 8- or 16-bit unsigned, or float)")
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    if np.issubdtype(img.dtype, np.floating):
        out = img.astype(np.float32)
        if not np.isfinite(out).all():
            raise RegistrationError(f"{name}: NaN or infinite pixel values")
        if out.min() < 0.0 or out.max() > 1.0:
            raise RegistrationError(f"{name}: float pixels must lie in [0, 1], got "
                                    f"[{out.min():.3g}, {out.max():.3g}]")
        return out
    raise RegistrationError(f"{name}: unsupported pixel type {img.dtype}")


def fit_image_size(image: np.ndarray, expected_size: tuple[int, int] | None, resize: bool,
                   source: str = "image") -> tuple[np.ndarray, bool]:
    """Return (image, resized): `image` (H, W, C) unchanged when `expected_size` (W, H) is None
    or already its size, else resized to it (bilinear, anti-aliased, same dtype) if `resize`;
    RegistrationError saying so when the size differs and resizing is not allowed."""
    if expected_size is None:
        return image, False
    w, h = int(expected_size[0]), int(expected_size[1])
    if w <= 0 or h <= 0:
        raise RegistrationError(f"{source}: expected size must be positive, got {w}x{h}")
    if image.shape[1] == w and image.shape[0] == h:
        return image, False
    if not resize:
        raise RegistrationError(f"{source} is {image.shape[1]}x{image.shape[0]} pixels but the "
                                f"camera expects {w}x{h}; refusing to resize (pass --resize "
                                f"to resize it, or an image/camera of matching size)")
    from skimage.transform import resize as sk_resize

    out = sk_resize(image, (h, w) + image.shape[2:], order=1, anti_aliasing=True,
                    preserve_range=True)
    return out.astype(image.dtype), True


def read_image(path: Path, expected_size: tuple[int, int] | None = None,
               resize: bool = False) -> np.ndarray:
    """Return the observed image as (H, W, 3) float32 in [0, 1] (row 0 at the top).

    expected_size: (W, H) in pixels, normally (camera.width, camera.height), or None for any.
    resize: when the file's size differs, resize to `expected_size` (True) or refuse (False).
    Resizing changes the aspect ratio if the file's differs; the camera is not touched.
    RegistrationError (one line) for a missing/unreadable file, a refused channel count or pixel
    type, or a refused size.
    """
    image = load_image(path, "image")
    image, _ = fit_image_size(image, expected_size, resize, f"image {path}")
    return image


def read_mask(path: Path, size: tuple[int, int], resize: bool = False) -> np.ndarray:
    """Return the object mask in `path` as (H, W) bool, True on the object.

    size: (W, H) the mask must have (the observed image's). resize: nearest-neighbour resize
    a mask of another size instead of refusing it. RegistrationError if missing, unreadable,
    of another size (and not resized) or empty.
    """
    grey = load_image(path, "mask").mean(axis=2)
    w, h = int(size[0]), int(size[1])
    if grey.shape != (h, w):
        if not resize:
            raise RegistrationError(f"mask {path} is {grey.shape[1]}x{grey.shape[0]} pixels but "
                                    f"the image is {w}x{h}; refusing to resize")
        rows = np.minimum(((np.arange(h) + 0.5) * grey.shape[0] / h).astype(int),
                          grey.shape[0] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * grey.shape[1] / w).astype(int),
                          grey.shape[1] - 1)
        grey = grey[rows[:, None], cols[None, :]]
    mask = grey > 0.5
    if not mask.any():
        raise RegistrationError(f"mask {path} is empty (no pixel above half intensity)")
    return mask


def read_camera(path: Path) -> CameraIntrinsics:
    """Return the intrinsics in the camera JSON file `path` (format in the module docstring);
    RegistrationError if the file is missing or not a JSON object, GeometryError naming the file
    and field if a field is missing, malformed or non-finite."""
    data = read_json(path, "camera", RegistrationError)
    return CameraIntrinsics.from_dict(data, source=f"camera {path}")


def read_pose(path: Path, units: str = "m") -> Pose:
    """Return the object -> camera pose in the pose JSON file `path` (format in the module
    docstring), translation converted to `units`; RegistrationError naming the file if missing,
    not a JSON object, in another frame or of an unknown unit, GeometryError naming the field if
    it is malformed, non-finite or not a rotation."""
    data = read_json(path, "pose", RegistrationError)
    source = f"pose {path}"
    frame = data.get("frame", POSE_FRAME)
    if frame != POSE_FRAME:
        raise RegistrationError(f"{source}: field 'frame' must be '{POSE_FRAME}', got {frame!r}")
    file_units = data.get("units", "m")
    if not isinstance(file_units, str):
        raise RegistrationError(f"{source}: field 'units' must be a string")
    scale = length_scale(file_units, units, source)
    pose = Pose.from_dict(data, source=source)
    return Pose(pose.rotation, pose.translation * scale)


def check_pose_in_view(vertices: np.ndarray, camera: CameraIntrinsics, pose: Pose,
                       znear: float, source: str = "pose") -> None:
    """RegistrationError naming `source` unless `vertices` (V, 3), object frame, seen at `pose`
    (object -> camera), all in metres, lie beyond the near plane `znear` (z > znear in the
    camera frame) and the bounding box of their projection overlaps the image
    [0, width) x [0, height) (pixels). An object behind the camera, with the camera inside it,
    or entirely outside the image gives registration no gradient to follow."""
    pts = np.asarray(vertices, np.float64) @ pose.rotation.T + pose.translation
    z = pts[:, 2]
    if z.max() <= znear:
        raise RegistrationError(f"{source}: the object is behind the camera (its nearest point "
                                f"at z = {z.max():.4g}, the near plane at {znear:g}); check the "
                                f"pose's translation and frame (OpenCV: z forward)")
    if z.min() <= znear:
        raise RegistrationError(f"{source}: the camera is inside or too close to the object "
                                f"(object depths {z.min():.4g} to {z.max():.4g}, the near plane "
                                f"at {znear:g}); the pose must show the object in front of it")
    u = camera.fx * pts[:, 0] / z + camera.cx
    v = camera.fy * pts[:, 1] / z + camera.cy
    if u.max() < 0 or u.min() >= camera.width or v.max() < 0 or v.min() >= camera.height:
        raise RegistrationError(f"{source}: no part of the object is in the image (it projects "
                                f"to u {u.min():.0f}..{u.max():.0f}, v {v.min():.0f}..{v.max():.0f}"
                                f" px; the image is {camera.width}x{camera.height})")
