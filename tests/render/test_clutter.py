"""Clutter for training views and evaluation observations: photos, procedural clutter,
occluders, camera effects (regtool/render/clutter.py)."""

from __future__ import annotations

import numpy as np
import pytest

from regtool.errors import DatasetError
from regtool.render.clutter import (
    HELD_BACK_PHOTOS,
    TRAIN_PHOTOS,
    builtin_photos,
    clutter_background,
    cover_crop,
    dead_leaves,
    occlude,
    occluder_mask,
    photo_crop,
    photometric,
    textured_shapes,
)
from regtool.render.shading import random_background


def edge_density(img: np.ndarray) -> float:
    """Share of pixels with a colour step > 0.1 to the right or below neighbour."""
    dx = np.abs(np.diff(img, axis=1)).max(axis=2)[:-1] > 0.1
    dy = np.abs(np.diff(img, axis=0)).max(axis=2)[:, :-1] > 0.1
    return float((dx | dy).mean())


def test_builtin_photo_split_is_disjoint_and_loads():
    assert not set(TRAIN_PHOTOS) & set(HELD_BACK_PHOTOS)
    train, held = builtin_photos("train"), builtin_photos("held_back")
    assert [n for n, _ in train] == list(TRAIN_PHOTOS)
    assert [n for n, _ in held] == list(HELD_BACK_PHOTOS)
    for _, img in train + held:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert max(img.shape[:2]) <= 640 and img.std() > 10  # a real picture, not a blank
    held_bytes = {img.tobytes() for _, img in held}
    assert not any(img.tobytes() in held_bytes for _, img in train)
    with pytest.raises(DatasetError, match="unknown built-in photo split"):
        builtin_photos("test")


def test_structured_backgrounds_have_edges_the_old_ones_lack():
    rng = np.random.default_rng(0)
    photos = tuple(img for _, img in builtin_photos("train"))
    old = [edge_density(random_background(rng, 120, 160)) for _ in range(12)]
    for make in (dead_leaves, textured_shapes):
        new = [edge_density(make(rng, 120, 160, photos)) for _ in range(12)]
        assert np.mean(new) > 3 * np.mean(old), (make.__name__, np.mean(new), np.mean(old))
    img = clutter_background(np.random.default_rng(1), 120, 160, photos)
    assert img.shape == (120, 160, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    again = clutter_background(np.random.default_rng(1), 120, 160, photos)
    np.testing.assert_array_equal(img, again)  # seeded


def test_photo_crop_shows_the_photo():
    _, coffee = builtin_photos("held_back")[2]
    crop = photo_crop(np.random.default_rng(0), coffee, 120, 160, scale_range=(1.0, 1.0),
                      recolour=False)
    # The whole photo (same aspect ratio 4:3 -> 600x400 is 3:2, so the full height) resampled:
    # its mean colour is the photo's mean colour of that window, within a few grey levels.
    assert crop.shape == (120, 160, 3)
    h, w = coffee.shape[:2]
    window_means = [coffee[:, x0:x0 + int(h * 4 / 3)].reshape(-1, 3).mean(0) / 255
                    for x0 in range(0, w - int(h * 4 / 3) + 1, 10)]
    err = min(np.abs(crop.reshape(-1, 3).mean(0) - m).max() for m in window_means)
    assert err < 0.02, err


def test_occluder_covers_the_asked_fraction_of_the_object():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    for k in range(20):
        cy, cx, r = rng.uniform(40, 80), rng.uniform(50, 110), rng.uniform(10, 35)
        mask = (yy - cy) ** 2 + ((xx - cx) / 0.5) ** 2 < r ** 2
        for fraction in (0.1, 0.2, 0.5):
            covered = occluder_mask(rng, mask, fraction)
            share = (covered & mask).sum() / mask.sum()
            assert abs(share - fraction) < 0.03, (k, fraction, share)
            assert covered.sum() > (covered & mask).sum()  # it reaches beyond the object
    assert not occluder_mask(rng, np.zeros((8, 8), bool), 0.3).any()
    assert not occluder_mask(rng, mask, 0.0).any()


def test_occlude_paints_only_the_occluder():
    rng = np.random.default_rng(4)
    img = np.full((96, 128, 3), 0.5, np.float32)
    mask = np.zeros((96, 128), bool)
    mask[30:70, 40:90] = True
    out, covered = occlude(rng, img, mask, 0.25)
    changed = np.any(out != img, axis=2)
    assert covered.any() and not changed[~covered].any()
    assert changed[covered].mean() > 0.5  # a texture, not the same grey


def test_photometric_changes_colours_within_range_and_is_seeded():
    img = random_background(np.random.default_rng(0), 60, 80)
    a = photometric(np.random.default_rng(5), img)
    b = photometric(np.random.default_rng(5), img)
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and 0.0 <= a.min() and a.max() <= 1.0
    assert np.abs(a - img).mean() > 0.01


def test_cover_crop_fills_the_image_keeping_the_aspect_ratio():
    img = np.zeros((100, 400, 3), np.float32)
    img[:, 150:250] = 1.0  # a white band in the middle quarter
    out = cover_crop(img, 120, 160)  # scaled to 120x480, cut to its middle 160 columns
    assert out.shape == (120, 160, 3)
    assert out[:, 80].min() > 0.99 and out[:, 0].max() < 0.01
