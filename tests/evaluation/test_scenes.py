"""Evaluation observations over photos and with occluders (evaluate --backgrounds /
--occlusion), and render-view --background."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app
from regtool.evaluation.run import (
    evaluation_backgrounds,
    instance_rng,
    observe_instance,
    observe_instance_shaded,
    stage_observation,
    stage_rng,
)
from regtool.geometry.camera import CameraIntrinsics, Pose

pytestmark = pytest.mark.gl
runner = CliRunner()


@pytest.fixture(scope="module")
def shaded(dataset_dir):
    from regtool.data.dataset import load_category

    mesh = load_category(dataset_dir, "bottle").test[0].mesh
    camera = CameraIntrinsics.from_fov(128, 96, 40.0)
    plain = observe_instance(instance_rng(0, "bottle", 0), mesh, 1.0, camera, 0.6)
    return plain, observe_instance_shaded(instance_rng(0, "bottle", 0), mesh, 1.0, camera, 0.6)


def test_photo_backdrop_and_occluder(shaded):
    (pose0, plain), (pose, image, background) = shaded
    # The split into a shaded image and its background draws and renders the same as before.
    np.testing.assert_array_equal(pose0.matrix(), pose.matrix())
    np.testing.assert_array_equal(plain, image.rgb)
    (name, photo), *_ = evaluation_backgrounds("builtin")
    assert name == "astronaut"
    rgb, visible = stage_observation(stage_rng(0, "bottle", 0, name, 0.0), image, background,
                                     photo, 0.0)
    outside, inside = image.alpha == 0, image.alpha == 1
    np.testing.assert_allclose(rgb[inside], image.rgb[inside], atol=1e-6)  # object untouched
    assert np.abs(rgb[outside] - image.rgb[outside]).mean() > 0.05  # a new backdrop
    np.testing.assert_array_equal(visible, image.alpha >= 0.5)
    again, _ = stage_observation(stage_rng(0, "bottle", 0, name, 0.0), image, background,
                                 photo, 0.0)
    np.testing.assert_array_equal(rgb, again)  # seeded
    occluded, seen = stage_observation(stage_rng(0, "bottle", 0, name, 0.2), image,
                                       background, photo, 0.2)
    share = seen.sum() / visible.sum()
    assert abs(share - 0.8) < 0.03, share
    hidden = visible & ~seen
    assert np.abs(occluded[hidden] - rgb[hidden]).max(axis=1).mean() > 0.05


def test_evaluation_backgrounds_from_a_folder(tmp_path):
    assert evaluation_backgrounds("") is None
    assert [n for n, _ in evaluation_backgrounds("builtin")] == ["astronaut", "chelsea",
                                                                 "coffee", "rocket"]
    iio.imwrite(tmp_path / "b.png", np.full((30, 40, 3), 200, np.uint8))
    iio.imwrite(tmp_path / "a.png", np.zeros((30, 40), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    got = evaluation_backgrounds(str(tmp_path))
    assert [n for n, _ in got] == ["a.png", "b.png"]
    assert all(img.shape == (30, 40, 3) and img.dtype == np.uint8 for _, img in got)


def test_evaluate_refuses_bad_scene_options(dataset_dir, tmp_path):
    base = ["evaluate", "--dataset", str(dataset_dir), "--category", "bottle",
            "--shapespace", str(tmp_path / "s.npz"), "--unet", str(tmp_path / "u.pt"),
            "--out", str(tmp_path / "ev")]
    one_line_error(runner.invoke(app, [*base, "--occlusion", "1.5"]), "occlusion")
    one_line_error(runner.invoke(app, [*base, "--backgrounds", str(tmp_path / "none")]),
                   "backgrounds folder not found")
    assert not (tmp_path / "ev").exists()


def test_render_view_over_a_photo(dataset_dir, tmp_path):
    camera = CameraIntrinsics.from_fov(96, 72, 40.0)
    (tmp_path / "cam.json").write_text(json.dumps(camera.to_dict()))
    (tmp_path / "pose.json").write_text(json.dumps(Pose.look_at(0.6, 30, 20).to_dict()))
    photo = np.zeros((144, 384, 3), np.uint8)
    photo[:, :, 2] = np.linspace(0, 255, 384).astype(np.uint8)[None]  # a blue ramp
    iio.imwrite(tmp_path / "photo.png", photo)
    args = ["render-view", "--mesh", str(dataset_dir / "bottle/test/bottle_test_00.ply"),
            "--camera", str(tmp_path / "cam.json"), "--pose", str(tmp_path / "pose.json"),
            "--mask-out", str(tmp_path / "mask.png")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "v.png"), "--background",
                                 str(tmp_path / "photo.png")])
    assert result.exit_code == 0, result.output
    from scipy.ndimage import binary_dilation

    image, mask = iio.imread(tmp_path / "v.png"), iio.imread(tmp_path / "mask.png") > 0
    mask = binary_dilation(mask, iterations=2)  # anti-aliased edges blend object and photo
    # The photo scaled to 72 rows (x0.5: 192 columns) and cut about its centre: columns
    # 48..143 of the scaled ramp.
    expect = np.linspace(0, 255, 384)[96:288].reshape(96, 2).mean(1)
    row = image[2, :, 2].astype(float)
    free = ~mask[2]
    assert np.abs(row[free] - expect[free]).max() < 4
    assert image[..., 0][~mask].max() == 0
    one_line_error(runner.invoke(app, [*args, "--out", str(tmp_path / "w.png"),
                                       "--background", str(tmp_path / "nope.png")]),
                   "background file not found")
    assert not (tmp_path / "w.png").exists()


def test_one_scene_at_every_size(dataset_dir):
    """`scene_size`: the background drawn at 160x120 and upsampled to 640x480 is the scene;
    the 160x120 and 320x240 views are that scene area-averaged (not the drawn grid), the
    640x480 view is the scene itself, and every size sees the same pose."""
    from regtool.data.dataset import load_category
    from regtool.render.clutter import resize

    mesh = load_category(dataset_dir, "bottle").test[0].mesh
    views = {}
    for w, h in ((160, 120), (320, 240), (640, 480)):
        camera = CameraIntrinsics.from_fov(w, h, 40.0)
        views[w] = observe_instance_shaded(instance_rng(0, "bottle", 0), mesh, 1.0, camera,
                                           0.6, (160, 120), scene_size=(640, 480))
    scene = views[640][2]
    for w, h in ((160, 120), (320, 240)):
        np.testing.assert_allclose(views[w][2], resize(scene, h, w), atol=1e-6)
        np.testing.assert_array_equal(views[w][0].matrix(), views[640][0].matrix())
    drawn = observe_instance_shaded(instance_rng(0, "bottle", 0), mesh, 1.0,
                                    CameraIntrinsics.from_fov(160, 120, 40.0), 0.6,
                                    (160, 120))[2]
    assert np.abs(views[160][2] - drawn).max() > 0.01  # area-averaged, not the drawn grid
