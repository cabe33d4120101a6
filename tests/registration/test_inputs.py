"""Readers for `regtool register` inputs: image, mask, camera JSON, pose JSON."""

from __future__ import annotations

import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from regtool.config import RenderConfig, UNetConfig
from regtool.errors import GeometryError, RegistrationError
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.registration.inputs import (
    fit_image_size,
    read_camera,
    read_image,
    read_mask,
    read_pose,
)

H, W = 12, 16


def rgb8(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- images --------------------------------------------------------------------------------

def test_rgb_png(tmp_path):
    img = rgb8()
    iio.imwrite(tmp_path / "a.png", img)
    out = read_image(tmp_path / "a.png", expected_size=(W, H))
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, img / 255.0, atol=1e-6)


def test_grey_rgba_la_and_16_bit(tmp_path):
    img = rgb8()
    grey = img[:, :, 0]
    iio.imwrite(tmp_path / "grey.png", grey)
    out = read_image(tmp_path / "grey.png")
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], grey / 255.0, atol=1e-6)

    rgba = np.concatenate([img, np.full((H, W, 1), 7, np.uint8)], axis=2)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), img / 255.0, atol=1e-6)

    Image.fromarray(np.stack([grey, grey[::-1]], axis=2), "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png")[:, :, 1], grey / 255.0,
                               atol=1e-6)

    deep = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 300)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(read_image(tmp_path / "deep.png")[:, :, 2], deep / 65535.0,
                               atol=1e-6)


def test_jpeg(tmp_path):
    img = np.full((H, W, 3), (200, 100, 50), np.uint8)
    iio.imwrite(tmp_path / "a.jpg", img, quality=95)
    out = read_image(tmp_path / "a.jpg")
    np.testing.assert_allclose(out, img / 255.0, atol=0.03)


def test_wrong_channel_count_refused(tmp_path):
    iio.imwrite(tmp_path / "five.tif", np.zeros((H, W, 5), np.uint8))
    with pytest.raises(RegistrationError) as exc:
        read_image(tmp_path / "five.tif")
    assert "5 channels" in one_line(exc)


def test_wrong_size_refused_or_resized(tmp_path):
    img = np.full((H, W, 3), 128, np.uint8)
    img[:, W // 2:] = 255
    iio.imwrite(tmp_path / "a.png", img)
    with pytest.raises(RegistrationError) as exc:
        read_image(tmp_path / "a.png", expected_size=(2 * W, 2 * H))
    msg = one_line(exc)
    assert f"{W}x{H}" in msg and f"{2 * W}x{2 * H}" in msg and "refusing to resize" in msg
    out = read_image(tmp_path / "a.png", expected_size=(2 * W, 2 * H), resize=True)
    assert out.shape == (2 * H, 2 * W, 3) and out.dtype == np.float32
    assert out[:, :W - 2].max() == pytest.approx(128 / 255, abs=1e-5)  # left half unchanged
    assert out[:, W + 2:].min() == pytest.approx(1.0, abs=1e-5)
    small, resized = fit_image_size(out, (W, H), resize=True)
    assert resized and small.shape == (H, W, 3)
    same, resized = fit_image_size(small, (W, H), resize=False)
    assert not resized and same is small


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(RegistrationError) as exc:
        read_image(tmp_path / "nope.png")
    assert "not found" in one_line(exc)
    (tmp_path / "text.png").write_text("this is not a PNG")
    with pytest.raises(RegistrationError) as exc:
        read_image(tmp_path / "text.png")
    assert "cannot read image" in one_line(exc)


def test_float_image_out_of_range_refused(tmp_path):
    iio.imwrite(tmp_path / "f.tif", np.full((H, W, 3), 2.0, np.float32))
    with pytest.raises(RegistrationError, match=r"\[0, 1\]"):
        read_image(tmp_path / "f.tif")


# --- masks ---------------------------------------------------------------------------------

def test_mask(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[3:9, 4:10] = 255
    iio.imwrite(tmp_path / "m.png", mask)
    out = read_mask(tmp_path / "m.png", (W, H))
    assert out.dtype == bool and out.shape == (H, W)
    np.testing.assert_array_equal(out, mask > 0)
    with pytest.raises(RegistrationError) as exc:
        read_mask(tmp_path / "m.png", (2 * W, 2 * H))
    assert "refusing" in one_line(exc)
    big = read_mask(tmp_path / "m.png", (2 * W, 2 * H), resize=True)
    np.testing.assert_array_equal(big, np.kron(mask > 0, np.ones((2, 2), bool)))
    iio.imwrite(tmp_path / "empty.png", np.zeros((H, W), np.uint8))
    with pytest.raises(RegistrationError, match="empty"):
        read_mask(tmp_path / "empty.png", (W, H))


# --- camera --------------------------------------------------------------------------------

def write_json(path, data) -> None:
    path.write_text(json.dumps(data))


CAMERA = {"fx": 300.0, "fy": 310.0, "cx": 160.0, "cy": 120.0, "width": 320, "height": 240}


def test_camera(tmp_path):
    write_json(tmp_path / "cam.json", dict(CAMERA, comment="ignored"))
    cam = read_camera(tmp_path / "cam.json")
    assert cam == CameraIntrinsics(300.0, 310.0, 160.0, 120.0, 320, 240)


@pytest.mark.parametrize("change, words", [
    ({"fx": None}, "missing field 'fx'"),
    ({"height": None}, "missing field 'height'"),
    ({"fy": float("nan")}, "'fy' must be a finite number"),
    ({"cx": float("inf")}, "'cx' must be a finite number"),
    ({"fx": "300"}, "'fx' must be a finite number"),
    ({"fx": -1.0}, "'fx' must be positive"),
    ({"width": 320.5}, "'width' must be an integer"),
])
def test_camera_bad_fields(tmp_path, change, words):
    data = {k: v for k, v in dict(CAMERA, **change).items() if v is not None}
    path = tmp_path / "cam.json"
    path.write_text(json.dumps(data))  # Python writes NaN / Infinity, which json.loads reads
    with pytest.raises(GeometryError) as exc:  # the field checks belong to the geometry layer
        read_camera(path)
    msg = one_line(exc)
    assert words in msg and str(path) in msg


def test_camera_file_errors(tmp_path):
    with pytest.raises(RegistrationError, match="not found"):
        read_camera(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{fx: 1")
    with pytest.raises(RegistrationError, match="not valid JSON"):
        read_camera(tmp_path / "bad.json")
    write_json(tmp_path / "list.json", [1, 2, 3])
    with pytest.raises(RegistrationError, match="JSON object"):
        read_camera(tmp_path / "list.json")


# --- pose ----------------------------------------------------------------------------------

def test_pose_rotation_rotvec_and_units(tmp_path):
    pose = Pose.look_at(0.6, azimuth_deg=40.0, elevation_deg=15.0)
    write_json(tmp_path / "p.json", pose.to_dict())
    back = read_pose(tmp_path / "p.json")
    np.testing.assert_allclose(back.rotation, pose.rotation, atol=1e-12)
    np.testing.assert_allclose(back.translation, pose.translation, atol=1e-12)

    write_json(tmp_path / "rv.json", {"rotvec": [0.0, 0.0, math.pi / 2],
                                      "translation": [10.0, 0.0, 600.0], "units": "mm"})
    rv = read_pose(tmp_path / "rv.json")
    np.testing.assert_allclose(rv.rotation, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(rv.translation, [0.01, 0.0, 0.6])
    np.testing.assert_allclose(read_pose(tmp_path / "rv.json", units="mm").translation,
                               [10.0, 0.0, 600.0])


@pytest.mark.parametrize("data, words", [
    ({"rotvec": [0, 0, 0]}, "missing field 'translation'"),
    ({"translation": [0, 0, 1]}, "missing field 'rotation'"),
    ({"rotvec": [0, 0], "translation": [0, 0, 1]}, "'rotvec' must have shape (3,)"),
    ({"rotvec": [0, 0, float("nan")], "translation": [0, 0, 1]}, "non-finite"),
    ({"rotvec": [0, 0, 0], "translation": [0, float("inf"), 1]}, "non-finite"),
    ({"rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]], "translation": [0, 0, 1]},
     "not a rotation"),
    ({"rotvec": [0, 0, 0], "translation": ["a", 0, 1]}, "'translation'"),
])
def test_pose_bad_fields(tmp_path, data, words):
    path = tmp_path / "pose.json"
    write_json(path, data)
    with pytest.raises(GeometryError) as exc:  # the field checks belong to the geometry layer
        read_pose(path)
    msg = one_line(exc)
    assert words in msg and str(path) in msg


@pytest.mark.parametrize("data, words", [
    ({"rotvec": [0, 0, 0], "translation": [0, 0, 1], "frame": "camera_to_object"},
     "field 'frame'"),
    ({"rotvec": [0, 0, 0], "translation": [0, 0, 1], "units": "inch"}, "unknown length unit"),
])
def test_pose_file_conventions(tmp_path, data, words):
    path = tmp_path / "pose.json"
    write_json(path, data)
    with pytest.raises(RegistrationError) as exc:
        read_pose(path)
    msg = one_line(exc)
    assert words in msg and str(path) in msg


# --- the documented examples ----------------------------------------------------------------

def test_examples_read(repo_root):
    examples = repo_root / "configs" / "examples"
    cam = read_camera(examples / "camera.json")
    render, unet = RenderConfig(), UNetConfig()
    expected = CameraIntrinsics.from_fov(unet.image_width, unet.image_height, render.fov_y_deg)
    assert cam == expected  # the example is the default camera at the default U-Net's size
    pose = read_pose(examples / "pose.json")
    # The example looks at the object origin (the built-in data's bounding-box centre) from
    # 0.6 m: the origin lies on the optical axis, as the evaluation's poses put it.
    np.testing.assert_allclose(pose.translation, [0, 0, 0.6], atol=1e-9)
    expected = Pose.look_at(0.6, azimuth_deg=30.0, elevation_deg=20.0)
    np.testing.assert_allclose(pose.rotation, expected.rotation, atol=1e-9)
