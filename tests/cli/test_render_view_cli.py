"""`regtool render-view`: its error paths (one line, exit 2, nothing written) and units."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app
from regtool.geometry.camera import CameraIntrinsics, Pose

pytestmark = pytest.mark.gl
runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("render_view")
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    sphere.export(d / "sphere_m.ply")
    trimesh.Trimesh(sphere.vertices * 1000.0, sphere.faces).export(d / "sphere_mm.ply")
    (d / "camera.json").write_text(json.dumps(CameraIntrinsics.from_fov(96, 72, 40.0).to_dict()))
    (d / "pose.json").write_text(json.dumps(Pose.look_at(0.6, 30.0, 20.0).to_dict()))
    behind = Pose(np.eye(3), np.array([0.0, 0.0, -0.6]))
    (d / "behind.json").write_text(json.dumps(behind.to_dict()))
    return d


def _args(d, out, mesh="sphere_m.ply", pose="pose.json", *extra):
    return ["--seed", "1", "render-view", "--mesh", str(d / mesh), "--camera",
            str(d / "camera.json"), "--pose", str(d / pose), "--out", str(out), *extra]


@pytest.mark.parametrize("extra, words", [
    (("--color", "red"), "--color must be three numbers in [0, 1]"),
    (("--color", "0.5,0.5"), "--color must be three numbers in [0, 1]"),
    (("--color", "0.5,0.5,1.5"), "--color must be three numbers in [0, 1]"),
    (("--units", "inch"), "--units must be one of m, cm, mm"),
])
def test_bad_options(inputs, tmp_path, extra, words):
    out = tmp_path / "v.png"
    one_line_error(runner.invoke(app, _args(inputs, out, "sphere_m.ply", "pose.json", *extra)),
                   words)
    assert not out.exists()


def test_missing_mesh_and_invisible_object(inputs, tmp_path):
    out = tmp_path / "v.png"
    one_line_error(runner.invoke(app, _args(inputs, out, "nope.ply")), "nope.ply")
    one_line_error(runner.invoke(app, _args(inputs, out, "sphere_m.ply", "behind.json")),
                   "the mesh is not visible with this camera and pose")
    assert not out.exists()


def test_mesh_in_millimetres_renders_like_metres(inputs, tmp_path):
    m_out, mm_out = tmp_path / "m.png", tmp_path / "mm.png"
    assert runner.invoke(app, _args(inputs, m_out, "sphere_m.ply", "pose.json",
                                    "--color", "0.8,0.2,0.2")).exit_code == 0
    result = runner.invoke(app, _args(inputs, mm_out, "sphere_mm.ply", "pose.json",
                                      "--color", "0.8,0.2,0.2", "--units", "mm"))
    assert result.exit_code == 0, result.output
    a, b = iio.imread(m_out).astype(int), iio.imread(mm_out).astype(int)
    assert a.shape == (72, 96, 3)
    assert np.abs(a - b).max() <= 1  # float32 file coordinates differ in the last bits
    assert (np.abs(a - a[0, 0]).sum(axis=-1) > 30).sum() > 100  # the sphere is in the image
