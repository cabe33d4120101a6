"""Issue 12 (reliability), bad inputs and faults through the CLI: each case gives one red line
and exit code 2, or (for the OSMesa fallback and --debug) behaves as documented.

Point 3 (checkpoint + side files as one unit, the SIGKILL test) lives in
tests/features/test_checkpoint_unit.py, point 15 (watertight meshes) in
tests/data/test_procedural_weld.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app
from regtool.config import ShapeSpaceConfig, UNetConfig, load_config
from regtool.errors import (
    ArtifactError,
    GeometryError,
    GLContextError,
    MeshError,
    RegistrationError,
)

pytestmark = pytest.mark.gl  # the shared artifacts are rendered and trained
runner = CliRunner()
CAMERA = {"fx": 110.0, "fy": 110.0, "cx": 48.0, "cy": 36.0, "width": 96, "height": 72}
POSE = {"rotvec": [1.9, 0.0, 0.0], "translation": [0.0, 0.0, 0.6]}


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def flip_member_bytes(path: Path, member_suffix: str, n: int = 100) -> str:
    """Flip `n` bytes in the middle of the stored data of the zip member whose name ends with
    `member_suffix` (torch stores tensors uncompressed); return the member's name."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2 - n // 2
    assert info.compress_size >= n
    for i in range(start, start + n):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    return info.filename


def storage_members(path: Path) -> list[tuple[str, int]]:
    """(name, bytes) of the tensor-storage members (`<archive>/data/<n>`) of a torch file, in
    pickling order (a checkpoint pickles the model's tensors, then the optimiser's)."""
    with zipfile.ZipFile(path) as archive:
        found = [(i.filename, i.file_size) for i in archive.infolist()
                 if "/data/" in i.filename and i.filename.rsplit("/", 1)[1].isdigit()]
    return sorted(found, key=lambda m: int(m[0].rsplit("/", 1)[1]))


@pytest.fixture(scope="module")
def artifacts(dataset_dir, tmp_path_factory) -> dict[str, Path]:
    """A small bottle shape space, a U-Net trained for 4 steps, a 96x72 observation with its
    mask, camera and pose files."""
    from regtool.features.train import train_unet
    from regtool.shapespace.build import build_shapespace

    out = tmp_path_factory.mktemp("reliability")
    cfg = load_config(None)
    space, report = build_shapespace(dataset_dir, "bottle", ShapeSpaceConfig(
        latent_dim=3, template_points=200, target_points=200, max_iterations=15), seed=0)
    space.save(out / "shapespace.npz", report)
    ucfg = UNetConfig(base_channels=4, depth=2, feature_channels=8, image_width=96,
                      image_height=72, steps=4, batch_size=2, val_views=2, val_every=2,
                      checkpoint_every=2, render_workers=0, train_threads=1)
    train_unet(dataset_dir, "bottle", ucfg, cfg.render, out / "unet.pt", seed=0)
    camera = write_json(out / "camera.json", CAMERA)
    pose = write_json(out / "pose.json", POSE)
    image = out / "obs.png"
    result = runner.invoke(app, ["render-view", "--mesh",
                                 str(dataset_dir / "bottle/test/bottle_test_00.ply"),
                                 "--camera", str(camera), "--pose", str(pose), "--out",
                                 str(image), "--mask-out", str(out / "mask.png")])
    assert result.exit_code == 0, result.output
    return {"shapespace": out / "shapespace.npz", "unet": out / "unet.pt", "camera": camera,
            "pose": pose, "image": image, "mask": out / "mask.png", "dir": out}


def register_args(a: dict[str, Path], out: Path, **change) -> list[str]:
    args = {"--shapespace": a["shapespace"], "--unet": a["unet"], "--image": a["image"],
            "--mask": a["mask"], "--camera": a["camera"], "--pose": a["pose"], "--out": out,
            **change}
    flat = ["register"]
    for k, v in args.items():
        flat += [k, str(v)]
    return flat + ["--iterations", "2"]


# --- 6: verified checkpoints ----------------------------------------------------------------

def test_register_refuses_unet_with_flipped_weight_bytes(artifacts, tmp_path):
    bad = tmp_path / "unet.pt"
    bad.write_bytes(artifacts["unet"].read_bytes())
    member = flip_member_bytes(bad, storage_members(bad)[0][0])  # the first conv's weights
    result = runner.invoke(app, register_args(artifacts, tmp_path / "reg", **{"--unet": bad}))
    one_line_error(result, str(bad), "corrupted", member, "CRC-32")
    assert not (tmp_path / "reg" / "result.json").exists()


def test_resume_refuses_corrupted_optimiser_state(artifacts, dataset_dir, tmp_path):
    bad = tmp_path / "unet.pt"
    bad.write_bytes(artifacts["unet"].read_bytes())
    import torch

    n_model = len(torch.load(bad, weights_only=True)["model"])
    optimiser = storage_members(bad)[n_model:]  # AdamW's exp_avg, exp_avg_sq, step
    member = flip_member_bytes(bad, max(optimiser, key=lambda m: m[1])[0])
    cfg = tmp_path / "u.toml"
    cfg.write_text("[unet]\nbase_channels = 4\ndepth = 2\nfeature_channels = 8\n"
                   "image_width = 96\nimage_height = 72\nsteps = 6\nrender_workers = 0\n")
    result = runner.invoke(app, ["train-unet", "--dataset", str(dataset_dir), "--category",
                                 "bottle", "--out", str(bad), "--config", str(cfg), "--resume"])
    one_line_error(result, "corrupted", member)


def test_checkpoint_with_valid_crc_but_changed_tensors_is_refused(artifacts, tmp_path):
    """Damage a checksum cannot see (the zip rewritten around changed tensors): the content
    hash in the metadata catches it, for the weights and for the optimiser state."""
    import torch

    from regtool.features.unet import load_unet

    for part in ("model", "optimizer"):
        blob = torch.load(artifacts["unet"], weights_only=True)
        if part == "model":
            key = next(iter(blob["model"]))
            blob["model"][key] = blob["model"][key] + 0.01
        else:
            state = next(iter(blob["optimizer"]["state"].values()))
            state["exp_avg"] = state["exp_avg"] + 0.01
        path = tmp_path / f"{part}.pt"
        torch.save(blob, path)
        assert zipfile.ZipFile(path).testzip() is None  # every CRC is right
        with pytest.raises(ArtifactError, match="do not match the content hash"):
            load_unet(path)


# --- 8: a pose that does not show the object ----------------------------------------------

@pytest.mark.parametrize("translation, words", [
    ([0.0, 0.0, -0.6], "behind the camera"),
    ([2.0, 0.0, 0.6], "no part of the object is in the image"),
    ([0.0, 0.0, 1e-9], "camera is inside or too close to the object"),
])
def test_register_refuses_pose_not_showing_the_object(artifacts, tmp_path, translation, words):
    pose = write_json(tmp_path / "pose.json", dict(POSE, translation=translation))
    result = runner.invoke(app, register_args(artifacts, tmp_path / "reg", **{"--pose": pose}))
    one_line_error(result, "initial pose", words)
    assert "Warning" not in result.output
    assert not (tmp_path / "reg" / "result.json").exists()


def test_pose_check_accepts_a_visible_object():
    from regtool.geometry.camera import CameraIntrinsics, Pose
    from regtool.registration.inputs import check_pose_in_view

    cam = CameraIntrinsics(**CAMERA)
    cube = np.array([[x, y, z] for x in (-.05, .05) for y in (-.05, .05) for z in (-.05, .05)])
    check_pose_in_view(cube, cam, Pose(np.eye(3), np.array([0.0, 0.0, 0.6])), 0.01)
    # Partly outside the image on the left: still shows the object.
    check_pose_in_view(cube, cam, Pose(np.eye(3), np.array([-0.28, 0.0, 0.6])), 0.01)
    with pytest.raises(RegistrationError, match="no part"):
        check_pose_in_view(cube, cam, Pose(np.eye(3), np.array([-0.4, 0.0, 0.6])), 0.01)


# --- 9: one number check for camera and pose ----------------------------------------------

@pytest.mark.parametrize("pose", [
    {"rotvec": [0, 0, 0], "translation": [0, 0, "0.6"]},
    {"rotvec": ["0", 0, 0], "translation": [0, 0, 0.6]},
    {"rotation": [[1, 0, 0], [0, 1, 0], [0, 0, "1"]], "translation": [0, 0, 0.6]},
    {"rotvec": [0, 0, 0], "translation": [0, True, 0.6]},
])
def test_pose_numbers_as_strings_are_refused(artifacts, tmp_path, pose):
    path = write_json(tmp_path / "pose.json", pose)
    result = runner.invoke(app, register_args(artifacts, tmp_path / "reg", **{"--pose": path}))
    one_line_error(result, str(path), "must be numbers")


def test_camera_and_pose_share_one_number_check(tmp_path):
    from regtool.registration.inputs import read_camera, read_pose

    cam = write_json(tmp_path / "cam.json", dict(CAMERA, fx="110"))
    pose = write_json(tmp_path / "pose.json", dict(POSE, translation=[0, 0, "0.6"]))
    with pytest.raises(GeometryError, match=r"field 'fx' must be a finite number, got '110'"):
        read_camera(cam)
    with pytest.raises(GeometryError, match=r"field 'translation' must be numbers, got '0.6'"):
        read_pose(pose)


# --- 10: tracebacks that become one line ----------------------------------------------------

def test_manifest_units_of_wrong_type(dataset_dir, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(dataset_dir / "bottle", root / "bottle")
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    manifest["units"] = ["m"]
    manifest["categories"] = {"bottle": manifest["categories"]["bottle"]}
    write_json(root / "manifest.json", manifest)
    result = runner.invoke(app, ["build-shapespace", "--dataset", str(root), "--category",
                                 "bottle", "--out", str(tmp_path / "s.npz")])
    one_line_error(result, "units must be one of")


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_seed_out_of_range(tmp_path, seed):
    result = runner.invoke(app, ["--seed", seed, "make-dataset", "--out", str(tmp_path / "d"),
                                 "--categories", "bottle"])
    one_line_error(result, "--seed must be a whole number from 0 to")
    assert not (tmp_path / "d").exists()


def test_camera_width_too_large_for_a_float(artifacts, tmp_path):
    cam = tmp_path / "cam.json"
    cam.write_text(json.dumps(CAMERA).replace('"width": 96', '"width": 1' + "0" * 400))
    result = runner.invoke(app, register_args(artifacts, tmp_path / "reg", **{"--camera": cam}))
    one_line_error(result, "field 'width' must be a finite number")


def test_image_larger_than_opengl_renders(artifacts, tmp_path):
    from regtool.render.context import get_context

    max_w, max_h, _ = get_context().max_size()
    side = max_w + 16
    cam = write_json(tmp_path / "cam.json", dict(CAMERA, width=side, height=64, cx=side / 2))
    mesh = tmp_path / "m.ply"
    import trimesh

    trimesh.creation.icosphere(1, 0.05).export(mesh)
    result = runner.invoke(app, ["render-view", "--mesh", str(mesh), "--camera", str(cam),
                                 "--pose", str(artifacts["pose"]), "--out",
                                 str(tmp_path / "v.png")])
    one_line_error(result, f"cannot render {side}x64 pixels", f"at most {max_w}x{max_h}",
                   "GL_MAX_TEXTURE_SIZE")
    assert not (tmp_path / "v.png").exists()


def test_register_renders_a_huge_image_at_the_networks_scale(artifacts, tmp_path):
    """register used to render at supersample x the camera size (3 by default) and refused a
    camera that fits the GL limit but not 3 times over. Any image size is now brought to the
    U-Net's training scale first (registration/rescale.py): such an image registers, in a
    view of the U-Net's training size (96x72), and result.json records the resampling."""
    from regtool.render.context import get_context

    max_w, _, _ = get_context().max_size()
    width = max_w // 3 + 8
    cam = write_json(tmp_path / "cam.json", dict(CAMERA, width=width, cx=width / 2))
    image = tmp_path / "wide.png"
    iio.imwrite(image, np.zeros((72, width, 3), np.uint8))
    mask = tmp_path / "mask.png"
    m = np.zeros((72, width), np.uint8)
    m[20:50, width // 2 - 20:width // 2 + 20] = 255
    iio.imwrite(mask, m)
    result = runner.invoke(app, register_args(artifacts, tmp_path / "reg", **{
        "--camera": cam, "--image": image, "--mask": mask}))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "reg" / "result.json").read_text())
    (view,) = record["network_views"]
    assert view["resampled"] and view["size"] == [96, 72]
    assert view["scale"][0] == pytest.approx(0.9, abs=0.01)  # 110 px focal -> 98.9 px


# --- 11: the OSMesa fallback ----------------------------------------------------------------

OSMESA_SCRIPT = """
import json, sys
import numpy as np, trimesh
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.render.context import get_context
from regtool.render.gbuffer import rasterize
from regtool.render.shading import render_shaded
mesh = trimesh.creation.icosphere(2, 0.1)
pose = Pose.look_at(0.6, 30, 20)
out = {}
for w, h in [(96, 72), (200, 150), (96, 72)]:  # resizing keeps the context and its GL objects
    cam = CameraIntrinsics.from_fov(w, h, 40)
    shaded = render_shaded(mesh.vertices, mesh.faces, pose, cam)
    gb = rasterize(mesh.vertices @ pose.rotation.T + pose.translation, mesh.faces, cam)
    out[f"{w}x{h}"] = {"rgb": np.round(shaded.rgb, 3).tolist(),
                       "face": np.asarray(gb.face_id).tolist()}
info = get_context().info()
out["platform"], out["renderer"] = info["platform"], info["renderer"]
json.dump(out, sys.stdout)
"""


def _render_in_subprocess(platform: str) -> dict:
    env = {**os.environ, "PYOPENGL_PLATFORM": platform}
    proc = subprocess.run([sys.executable, "-c", OSMESA_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.gl
def test_osmesa_fallback_renders_like_egl():
    """PYOPENGL_PLATFORM=osmesa (the documented fallback) renders shaded images and G-buffers,
    across size changes, like EGL: identically where EGL is Mesa's llvmpipe too (a CPU-only
    machine), within edge pixels where EGL is a GPU driver."""
    osmesa = _render_in_subprocess("osmesa")
    egl = _render_in_subprocess("egl")
    assert osmesa.pop("platform") == "osmesa" and egl.pop("platform") == "egl"
    same_driver = osmesa.pop("renderer") == egl.pop("renderer")
    for size in egl:
        face_o, face_e = np.asarray(osmesa[size]["face"]), np.asarray(egl[size]["face"])
        assert (face_e >= 0).sum() > 100  # the sphere is in view
        diff = np.abs(np.asarray(osmesa[size]["rgb"]) - np.asarray(egl[size]["rgb"]))
        if same_driver:
            assert np.array_equal(face_o, face_e), size
            assert diff.max() <= 0.01, size
        else:
            assert (face_o == face_e).mean() > 0.99, size
            assert diff.mean() < 0.01, size


@pytest.mark.gl
def test_osmesa_register_cli_in_subprocess(artifacts, tmp_path):
    """The whole register command with PYOPENGL_PLATFORM=osmesa, as a user runs it."""
    exe = Path(sys.executable).parent / "regtool"
    out = tmp_path / "reg"
    env = {**os.environ, "PYOPENGL_PLATFORM": "osmesa"}
    proc = subprocess.run([str(exe), *register_args(artifacts, out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert "llvmpipe" in result["versions"]["gl_renderer"]  # OSMesa renders in software
    assert (out / "deformed.ply").is_file() and (out / "overlay.png").is_file()


# --- 12: --debug keeps the cause ------------------------------------------------------------

def _debug_exception(args: list[str]):
    result = runner.invoke(app, ["--debug", *args])
    assert result.exit_code != 0 and result.exception is not None, result.output
    return result.exception


def test_debug_keeps_the_cause_of_unreadable_inputs(artifacts, tmp_path):
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"ply\nformat nonsense\n" + os.urandom(64))
    exc = _debug_exception(["render-view", "--mesh", str(garbage), "--camera",
                            str(artifacts["camera"]), "--pose", str(artifacts["pose"]),
                            "--out", str(tmp_path / "v.png")])
    assert isinstance(exc, MeshError) and exc.__cause__ is not None

    bad_png = tmp_path / "obs.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    exc = _debug_exception(register_args(artifacts, tmp_path / "r1", **{"--image": bad_png}))
    assert isinstance(exc, RegistrationError) and exc.__cause__ is not None

    bad_unet = tmp_path / "unet.pt"
    bad_unet.write_bytes(b"PK\x03\x04 this is not a zip")
    exc = _debug_exception(register_args(artifacts, tmp_path / "r2", **{"--unet": bad_unet}))
    assert isinstance(exc, ArtifactError) and exc.__cause__ is not None


def test_every_reader_keeps_the_cause(artifacts, tmp_path):
    """The other catches that re-raised `from None`: points, config TOML, manifest JSON, shape
    space, camera/pose JSON."""
    from regtool.config import load_config
    from regtool.data.manifest import read_manifest
    from regtool.errors import ConfigError, DatasetError
    from regtool.geometry.mesh import load_points
    from regtool.registration.inputs import read_pose
    from regtool.shapespace.space import ShapeSpace

    (tmp_path / "p.xyz").write_text("1 2 x\n")
    (tmp_path / "c.toml").write_text("[unet\n")
    (tmp_path / "manifest.json").write_text("{")
    (tmp_path / "s.npz").write_bytes(artifacts["shapespace"].read_bytes()[:-100])
    (tmp_path / "pose.json").write_text("{'rotvec': ")
    for call, error in [(lambda: load_points(tmp_path / "p.xyz"), MeshError),
                        (lambda: load_config(tmp_path / "c.toml"), ConfigError),
                        (lambda: read_manifest(tmp_path), DatasetError),
                        (lambda: ShapeSpace.load(tmp_path / "s.npz"), ArtifactError),
                        (lambda: read_pose(tmp_path / "pose.json"), RegistrationError)]:
        with pytest.raises(error) as info:
            call()
        assert info.value.__cause__ is not None, info.value


def test_debug_keeps_the_cause_of_a_missing_gl_context(monkeypatch):
    import pyrender

    import regtool.render.context as context

    def no_gl(self, *args, **kwargs):
        raise OSError("libEGL.so.1: cannot open shared object file")

    monkeypatch.setattr(pyrender.OffscreenRenderer, "__init__", no_gl)
    with pytest.raises(GLContextError) as info:
        context.GLContext(8, 8)
    assert isinstance(info.value.__cause__, OSError)
    assert "libEGL.so.1" in str(info.value)
