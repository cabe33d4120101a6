"""Structure in and around the object: photos, procedural clutter, occluders, camera effects.

Used by the U-Net's training views (`features.views`) and by observations of the evaluation
(`evaluation.run`, `render-view --background`). Images are (H, W, 3) float32 RGB in [0, 1], rows
top to bottom; every function is deterministic given its generator.

The built-in photos are scikit-image's bundled images (no download). They are split once, by
name: TRAIN_PHOTOS may appear in training views, HELD_BACK_PHOTOS never do and serve the
evaluation (`evaluate --backgrounds builtin`, train-unet's `photo_test_iou`). The held-back four
are the everyday colour scenes; the training ones are microscopy, astronomy, fundus, graphics,
a stereo street scene and grey-level photos and textures (tinted when used).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from regtool.errors import DatasetError

TRAIN_PHOTOS = ("immunohistochemistry", "hubble_deep_field", "retina", "colorwheel", "logo",
                "stereo_motorcycle", "camera", "coins", "moon", "page", "text", "brick", "grass",
                "gravel", "cell", "clock")
HELD_BACK_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
MAX_SIDE = 640  # photos are downscaled so their longer side is at most this (pixels)


@functools.lru_cache(maxsize=2)
def builtin_photos(split: str) -> tuple[tuple[str, np.ndarray], ...]:
    """Return the built-in photos of `split` ("train" or "held_back") as (name, (H, W, 3) uint8)
    pairs, the longer side downscaled to <= MAX_SIDE; DatasetError for another split."""
    names = {"train": TRAIN_PHOTOS, "held_back": HELD_BACK_PHOTOS}.get(split)
    if names is None:
        raise DatasetError(f"unknown built-in photo split '{split}' (train, held_back)")
    import skimage.data

    out = []
    for name in names:
        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo pairs: the left image
            img = img[0]
        out.append((name, as_rgb_uint8(np.asarray(img))))
    return tuple(out)


def as_rgb_uint8(img: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """Return an image (H, W), (H, W, 3) or (H, W, 4) of any numeric dtype as (H, W, 3) uint8,
    downscaled by an integer step so its longer side is <= `max_side`."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        scale = 255.0 / (65535.0 if img.dtype == np.uint16 else max(float(img.max()), 1.0))
        img = np.clip(img.astype(np.float64) * scale + 0.5, 0, 255).astype(np.uint8)
    step = int(math.ceil(max(img.shape[:2]) / max_side))
    return np.ascontiguousarray(img[::step, ::step])


def photo_crop(rng: np.random.Generator, photo: np.ndarray, height: int, width: int,
               scale_range: tuple[float, float] = (0.35, 1.0), recolour: bool = True
               ) -> np.ndarray:
    """Return a random (height, width, 3) float32 crop of `photo` (H, W, 3) uint8: a window of
    `s` times the photo's largest window of that aspect ratio, s uniform in `scale_range`,
    resampled (bilinear), mirrored with probability 1/2; grey photos get a random two-colour
    tint and colour photos a random channel order with probability 1/4 when `recolour`."""
    h, w = photo.shape[:2]
    full = min(h / height, w / width)
    s = rng.uniform(*scale_range) * full
    ch, cw = max(2, int(round(height * s))), max(2, int(round(width * s)))
    ch, cw = min(ch, h), min(cw, w)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[y0:y0 + ch, x0:x0 + cw].astype(np.float32) / 255.0
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    crop = resize(crop, height, width)
    if recolour:
        grey = bool(np.all(photo[::8, ::8, 0] == photo[::8, ::8, 1]))
        if grey:
            a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
            crop = (a + (b - a) * crop[..., :1]).astype(np.float32)
        elif rng.uniform() < 0.25:
            crop = crop[..., rng.permutation(3)]
    return np.ascontiguousarray(crop, dtype=np.float32)


def cover_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return `img` (h, w, 3) float scaled (keeping its aspect ratio) to just cover
    (height, width) and cut to it about its centre: (height, width, 3) float32."""
    h, w = img.shape[:2]
    s = max(height / h, width / w)
    nh, nw = max(height, int(math.ceil(h * s - 1e-9))), max(width, int(math.ceil(w * s - 1e-9)))
    big = resize(img, nh, nw) if (nh, nw) != (h, w) else np.asarray(img, np.float32)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(big[y0:y0 + height, x0:x0 + width], dtype=np.float32)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return `img` (h, w, C) resampled to (height, width, C) float32: area-averaged where it
    shrinks (anti-aliased), bilinear where it grows; pixel centres map onto pixel centres."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    h, w = img.shape[:2]
    if height < h or width < w:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                          antialias=True)
    else:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).numpy()


def texture(rng: np.random.Generator, height: int, width: int,
            photos: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """Return a random (height, width, 3) float32 fill: a flat colour, stripes, a checkerboard,
    smooth noise or (when `photos` are given) a photo crop."""
    kinds = ["flat", "stripes", "checker", "noise"] + (["photo"] if photos else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    a, b = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    if kind == "flat":
        return np.broadcast_to(a, (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind in ("stripes", "checker"):
        angle, period = rng.uniform(0, np.pi), rng.uniform(3.0, 24.0)
        u = np.cos(angle) * xx + np.sin(angle) * yy
        t = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
        if kind == "checker":
            v = -np.sin(angle) * xx + np.cos(angle) * yy
            t = np.logical_xor(t > 0, np.sin(2 * np.pi * v / period) > 0).astype(np.float32)
        return a + (b - a) * t[..., None]
    if kind == "noise":
        cell = int(rng.integers(2, 17))
        small = rng.uniform(0, 1, (height // cell + 2, width // cell + 2, 1)).astype(np.float32)
        t = resize(small, (height // cell + 2) * cell, (width // cell + 2) * cell)
        return a + (b - a) * t[:height, :width]
    photo = photos[int(rng.integers(len(photos)))]
    return photo_crop(rng, photo, height, width)


def _shape_mask(rng: np.random.Generator, height: int, width: int, radius: float
                ) -> np.ndarray:
    """Return a random shape (H, W) bool of about `radius` pixels: a disc, an ellipse, a
    polygon or a thick line, centred anywhere in the image."""
    from skimage.draw import ellipse, line_aa, polygon

    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    mask = np.zeros((height, width), bool)
    kind = int(rng.integers(4))
    if kind == 0:
        rr, cc = ellipse(cy, cx, radius, radius, shape=mask.shape)
    elif kind == 1:
        rr, cc = ellipse(cy, cx, radius * rng.uniform(0.3, 1), radius, shape=mask.shape,
                         rotation=rng.uniform(0, np.pi))
    elif kind == 2:
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.5, 1.0, n)
        rr, cc = polygon(cy + radii * np.sin(ang), cx + radii * np.cos(ang), shape=mask.shape)
    else:
        angle = float(rng.uniform(0, np.pi))
        dy, dx = radius * np.sin(angle), radius * np.cos(angle)
        y0, x0 = int(np.clip(cy - dy, 0, height - 1)), int(np.clip(cx - dx, 0, width - 1))
        y1, x1 = int(np.clip(cy + dy, 0, height - 1)), int(np.clip(cx + dx, 0, width - 1))
        rr, cc, _ = line_aa(y0, x0, y1, x1)
        mask[rr, cc] = True
        from scipy.ndimage import binary_dilation

        return binary_dilation(mask, iterations=int(rng.integers(1, 4)))
    mask[rr, cc] = True
    return mask


def dead_leaves(rng: np.random.Generator, height: int, width: int,
                photos: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """Return a dead-leaves image (H, W, 3) float32: random shapes with power-law sizes (radius
    density ~ r^-3, 2 px to half the image), each filled with a flat colour or, one in four,
    a texture, painted over each other until the image is covered."""
    img = texture(rng, height, width, photos)
    rmin, rmax = 2.0, 0.5 * max(height, width)
    for _ in range(int(rng.integers(40, 120))):
        u = rng.uniform()
        r = (rmin ** -2 + u * (rmax ** -2 - rmin ** -2)) ** -0.5  # inverse CDF of r^-3
        mask = _shape_mask(rng, height, width, r)
        if rng.uniform() < 0.25:
            img[mask] = texture(rng, height, width, photos)[mask]
        else:
            img[mask] = rng.uniform(0, 1, 3).astype(np.float32)
    return img


def textured_shapes(rng: np.random.Generator, height: int, width: int,
                    photos: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """Return a textured base with 3-12 large textured shapes (polygons, ellipses, bars) on it:
    (H, W, 3) float32."""
    img = texture(rng, height, width, photos)
    for _ in range(int(rng.integers(3, 13))):
        r = rng.uniform(0.08, 0.5) * max(height, width)
        mask = _shape_mask(rng, height, width, r)
        img[mask] = texture(rng, height, width, photos)[mask]
    return img


def clutter_background(rng: np.random.Generator, height: int, width: int,
                       photos: tuple[np.ndarray, ...], photo_share: float = 0.5) -> np.ndarray:
    """Return a structured background (H, W, 3) float32: a photo crop (when `photos` are given,
    with probability `photo_share`), else a dead-leaves image or textured shapes."""
    if photos and rng.uniform() < photo_share:
        return photo_crop(rng, photos[int(rng.integers(len(photos)))], height, width)
    if rng.uniform() < 0.5:
        return dead_leaves(rng, height, width, photos)
    return textured_shapes(rng, height, width, photos)


def occluder_mask(rng: np.random.Generator, mask: np.ndarray, fraction: float) -> np.ndarray:
    """Return an occluder (H, W) bool covering `fraction` of the object pixels `mask` (H, W)
    bool (as near as ties allow): a bar entering from a random direction with a wavy edge,
    as wide as the object and reaching beyond it. All False for an empty mask or fraction 0."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    if fraction <= 0 or not mask.any():
        return out
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    u = np.cos(angle) * xx + np.sin(angle) * yy   # along the bar
    v = -np.sin(angle) * xx + np.cos(angle) * yy  # across
    vo = v[mask]
    extent = max(float(np.ptp(u[mask])), float(np.ptp(vo)), 2.0)
    u = u + 0.08 * extent * np.sin(2 * np.pi * v / (extent * rng.uniform(0.3, 1.0))
                                   + rng.uniform(0, 2 * np.pi))
    t = float(np.quantile(u[mask], 1.0 - min(fraction, 1.0)))
    reach = float(u[mask].max()) + rng.uniform(0.1, 1.0) * extent
    lo = float(vo.min()) - rng.uniform(0.0, 0.5) * extent
    hi = float(vo.max()) + rng.uniform(0.0, 0.5) * extent
    out = (u >= t) & (u <= reach) & (v >= lo) & (v <= hi)
    if fraction >= 1.0:
        out |= mask
    return out


def occlude(rng: np.random.Generator, rgb: np.ndarray, mask: np.ndarray, fraction: float,
            photos: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Return (image, covered): `rgb` (H, W, 3) float with a textured occluder over `fraction`
    of the object pixels `mask` (H, W) bool, and the occluder's pixels (H, W) bool."""
    covered = occluder_mask(rng, mask, fraction)
    out = np.array(rgb, np.float32, copy=True)
    if covered.any():
        h, w = mask.shape
        out[covered] = texture(rng, h, w, photos)[covered]
    return out, covered


def photometric(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Return `rgb` (H, W, 3) float in [0, 1] with camera effects: colour jitter (per-channel
    gain 0.85-1.15, brightness +-0.1, contrast 0.7-1.3, saturation 0.5-1.5), Gaussian blur
    (sigma 0.3-1.2 px, half of the time) and sensor noise (sigma 0-0.04)."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(rgb, np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.5, 1.5)
    mean = float(x.mean())
    x = mean + (x - mean) * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    if rng.uniform() < 0.5:
        s = rng.uniform(0.3, 1.2)
        x = gaussian_filter(x, sigma=(s, s, 0), mode="nearest")
    x = x + rng.normal(0.0, rng.uniform(0.0, 0.04), x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)
