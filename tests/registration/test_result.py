"""Writers of one registration: meshes, result.json, overlay PNG, optimisation GIF."""

from __future__ import annotations

import errno
import json
import pathlib

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh

from regtool.errors import MeshError, OutputError, RegistrationError
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.geometry.mesh import load_mesh
from regtool.registration.figures import BAR_HEIGHT, overlay_figure
from regtool.registration.result import (
    OBSERVED_OUTLINE_RGB,
    RENDERED_OUTLINE_RGB,
    ViewResult,
    gif_bytes,
    mask_outline,
    overlay_image,
    software_versions,
    write_registration,
)

H, W = 24, 32


def square_mask(top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top:top + size, left:left + size] = True
    return mask


def make_view(shift: int = 0) -> ViewResult:
    rng = np.random.default_rng(shift)
    camera = CameraIntrinsics.from_fov(W, H, 40.0)
    pose = Pose.look_at(0.6, azimuth_deg=30.0 + shift)
    return ViewResult(observed=rng.uniform(size=(H, W, 3)).astype(np.float32),
                      rendered=rng.uniform(size=(H, W, 3)).astype(np.float32),
                      rendered_mask=square_mask(6, 8 + shift, 10),
                      pose=pose.compose(np.array([0.0, 0.0, 0.01]), np.array([0.01, 0, 0])),
                      camera=camera, initial_pose=pose,
                      observed_mask=square_mask(5, 10, 12), image_path=f"view{shift}.png")


def sphere():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def test_mask_outline_of_square():
    mask = square_mask(4, 4, 6)
    outline = mask_outline(mask)
    assert outline.sum() == 6 * 4 - 4  # the square's border ring
    assert not outline[5:9, 5:9].any() and outline[4, 4] and outline[9, 9]
    assert outline.sum() == (mask_outline(mask, thickness=2) & ~square_mask(6, 6, 2)).sum() - 12
    full = np.ones((H, W), bool)  # touching the image border: closed at the border
    assert mask_outline(full)[0].all() and not mask_outline(full)[1:-1, 1:-1].any()
    assert not mask_outline(np.zeros((H, W), bool)).any()


def test_overlay_panels_and_outline_colours():
    view = make_view()
    img = overlay_image(view.observed, view.rendered, view.rendered_mask, view.observed_mask)
    assert img.shape == (H, 3 * W, 3) and img.dtype == np.uint8
    obs8 = np.round(view.observed * 255).astype(np.uint8)
    ren8 = np.round(view.rendered * 255).astype(np.uint8)
    np.testing.assert_array_equal(img[:, :W], obs8)
    np.testing.assert_array_equal(img[:, W:2 * W], ren8)
    blend = img[:, 2 * W:]
    ren_line = mask_outline(view.rendered_mask)
    obs_line = mask_outline(view.observed_mask) & ~ren_line
    assert (blend[ren_line] == RENDERED_OUTLINE_RGB).all()
    assert (blend[obs_line] == OBSERVED_OUTLINE_RGB).all()
    inside = ~(ren_line | obs_line)
    expected = np.round(0.5 * obs8.astype(float) + 0.5 * ren8.astype(float))
    np.testing.assert_allclose(blend[inside], expected[inside], atol=1)
    # Without an observed mask only the rendered outline is drawn.
    img2 = overlay_image(view.observed, view.rendered, view.rendered_mask)
    assert (img2[:, 2 * W:][obs_line] != OBSERVED_OUTLINE_RGB).any(axis=-1).all()


def test_overlay_size_mismatch():
    view = make_view()
    with pytest.raises(RegistrationError, match="differ in size"):
        overlay_image(view.observed, view.rendered[:, :-1], view.rendered_mask[:, :-1])
    with pytest.raises(RegistrationError, match="observed mask"):
        overlay_image(view.observed, view.rendered, view.rendered_mask, np.ones((3, 3), bool))


def test_gif_round_trip():
    frames = [np.full((H, W, 3), v, np.float32) for v in (0.0, 0.5, 1.0)]
    data = gif_bytes(frames, fps=10)
    back = iio.imread(data, extension=".gif")
    assert back.shape[0] == 3 and back.shape[1:3] == (H, W)
    assert abs(int(back[1, ..., :3].mean()) - 128) <= 2
    assert iio.immeta(data, extension=".gif")["duration"] == 100
    # Pillow merges identical consecutive frames (their durations add up).
    assert iio.imread(gif_bytes([frames[0]] * 3), extension=".gif").shape[0] == 1
    with pytest.raises(RegistrationError, match="no frames"):
        gif_bytes([])
    with pytest.raises(RegistrationError, match="frame 1"):
        gif_bytes([frames[0], frames[1][:-2]])


def test_write_registration_all_files(tmp_path):
    vertices, faces = sphere()
    deformed = vertices * np.array([1.2, 0.9, 1.0])
    view = make_view()
    losses = [1.0, 0.5, float("nan"), 0.25, 0.3]
    frames = [overlay_image(view.observed, view.rendered * k / 3, view.rendered_mask)
              for k in range(4)]
    out = tmp_path / "reg"
    paths = write_registration(out, vertices=deformed, faces=faces, z=np.arange(5) * 0.1,
                               views=[view], losses=losses, frames=frames,
                               timings={"total_s": 1.5},
                               versions=software_versions("llvmpipe (LLVM 15.0.7, 256 bits)"),
                               config={"iterations": 5}, extra={"stopped": "plateau"})
    names = {"deformed.ply", "deformed.obj", "result.json", "overlay.png", "optimisation.gif"}
    assert set(paths) == names
    assert {p.name for p in out.iterdir()} == names | {".regtool-sets"}  # no staging folder
    # The hidden folder holds the set's link and its one generation, nothing left over.
    sets = sorted(p.name for p in (out / ".regtool-sets").iterdir())
    assert len(sets) == 2 and sets[0] == "registration", sets
    assert sets[1].startswith("registration.") and not sets[1].endswith(".tmp"), sets

    for name in ("deformed.ply", "deformed.obj"):
        mesh = load_mesh(out / name)
        np.testing.assert_allclose(mesh.vertices, deformed, atol=1e-6)  # same vertex order
        np.testing.assert_array_equal(mesh.faces, faces)

    rec = json.loads((out / "result.json").read_text())
    np.testing.assert_allclose(rec["z"], np.arange(5) * 0.1)
    assert rec["losses"] == [1.0, 0.5, None, 0.25, 0.3]  # NaN -> null (valid JSON)
    assert rec["best_loss"] == 0.25 and rec["best_iteration"] == 3 and rec["final_loss"] == 0.3
    assert rec["iterations"] == 5 and rec["stopped"] == "plateau"
    np.testing.assert_allclose(rec["pose"]["rotation"], view.pose.rotation)
    np.testing.assert_allclose(rec["views"][0]["initial_pose"]["translation"],
                               view.initial_pose.translation)
    assert rec["views"][0]["camera"]["width"] == W and rec["views"][0]["image"] == "view0.png"
    assert Pose.from_dict(rec["pose"]).translation == pytest.approx(view.pose.translation)
    assert rec["versions"]["gl_renderer"].startswith("llvmpipe")
    assert {"regtool", "torch", "numpy"} <= set(rec["versions"])
    assert rec["config"] == {"iterations": 5} and rec["timings"] == {"total_s": 1.5}
    assert set(rec["files"]) == names

    overlay = iio.imread(out / "overlay.png")
    view = make_view()
    np.testing.assert_array_equal(overlay[..., :3], overlay_figure(
        view.observed, view.rendered, view.rendered_mask, view.observed_mask))
    assert iio.imread(out / "optimisation.gif").shape[0] == 4


def test_multi_view_overlay_and_no_gif(tmp_path):
    vertices, faces = sphere()
    out = tmp_path / "reg"
    write_registration(out, vertices=vertices, faces=faces, z=np.zeros(3),
                       views=[make_view(0), make_view(2)], losses=[0.1])
    rows = [overlay_figure(v.observed, v.rendered, v.rendered_mask, v.observed_mask,
                           f"view {i + 1} of 2") for i, v in enumerate((make_view(0),
                                                                        make_view(2)))]
    np.testing.assert_array_equal(iio.imread(out / "overlay.png")[..., :3],
                                  np.concatenate(rows, axis=0))
    assert not (out / "optimisation.gif").exists()
    rec = json.loads((out / "result.json").read_text())
    assert len(rec["views"]) == 2 and rec["views"][1]["image"] == "view2.png"


@pytest.mark.parametrize("kwargs, error", [
    ({"vertices": np.full((42, 3), np.nan)}, MeshError),
    ({"z": np.array([0.0, np.inf])}, RegistrationError),
    ({"views": []}, RegistrationError),
    ({"frames": [np.zeros((H, W, 3)), np.zeros((H, W + 1, 3))]}, RegistrationError),
])
def test_bad_input_writes_nothing(tmp_path, kwargs, error):
    vertices, faces = sphere()
    args = dict(vertices=vertices, faces=faces, z=np.zeros(3), views=[make_view()],
                losses=[1.0], frames=None)
    args.update(kwargs)
    out = tmp_path / "reg"
    with pytest.raises(error):
        write_registration(out, **args)
    assert not out.exists()


def test_unwritable_output_folder(tmp_path):
    vertices, faces = sphere()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        write_registration(blocker / "reg", vertices=vertices, faces=faces, z=np.zeros(3),
                           views=[make_view()], losses=[1.0])


def test_failure_midway_leaves_no_partial_output(tmp_path, monkeypatch):
    """The meshes and overlay are already staged when result.json fails: none of them appear,
    an existing folder keeps exactly its old content, and a new folder is removed again."""
    vertices, faces = sphere()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    (existing / "result.json").write_text("{\"old\": true}\n")
    real = pathlib.Path.write_bytes

    def failing(self, data):
        if self.name == "result.json":
            raise OSError(errno.EIO, "Input/output error")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", failing)
    for out in (existing, tmp_path / "new"):
        with pytest.raises(OutputError, match="Input/output error"):
            write_registration(out, vertices=vertices, faces=faces, z=np.zeros(3),
                               views=[make_view()], losses=[1.0],
                               frames=[np.zeros((H, W, 3))] * 2)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt", "result.json"]
    assert json.loads((existing / "result.json").read_text()) == {"old": True}
    assert not (tmp_path / "new").exists()


@pytest.mark.gl
def test_real_renderings_end_to_end(tmp_path, repo_root):
    """Observed image rendered by the real renderer (a wider, shorter bottle over a random
    background), saved as PNG and read back like `regtool register` does; the canonical's
    rendering as the result. The overlay outlines follow the two real silhouettes."""
    from regtool.data.procedural import canonical_params, generate_mesh
    from regtool.registration.inputs import read_camera, read_image, read_pose
    from regtool.render.context import get_context
    from regtool.render.shading import Material, random_background, render_shaded

    examples = repo_root / "configs" / "examples"
    camera = read_camera(examples / "camera.json").scaled(160, 120)
    pose = read_pose(examples / "pose.json")
    mesh = generate_mesh("bottle", canonical_params("bottle"), 0.004)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    vertices = vertices - (vertices.max(axis=0) + vertices.min(axis=0)) / 2  # as make-dataset
    observed_vertices = vertices * np.array([1.25, 1.25, 0.85])
    rng = np.random.default_rng(0)
    background = random_background(rng, camera.height, camera.width)
    obs = render_shaded(observed_vertices, faces, pose, camera,
                        Material(base_color=(0.8, 0.3, 0.2)), background=background)
    iio.imwrite(tmp_path / "observed.png", np.round(obs.rgb * 255).astype(np.uint8))
    observed = read_image(tmp_path / "observed.png", (camera.width, camera.height))
    frames, rendered = [], None
    for t in np.linspace(0.0, 1.0, 4):
        verts = vertices * (1 - t) + observed_vertices * t * 0.5 + vertices * t * 0.5
        rendered = render_shaded(verts, faces, pose, camera)
        frames.append(overlay_image(observed, rendered.rgb, rendered.mask, obs.mask))
    view = ViewResult(observed, rendered.rgb, rendered.mask, pose, camera, pose, obs.mask,
                      "observed.png")
    versions = software_versions(get_context().info()["renderer"])
    out = tmp_path / "reg"
    write_registration(out, vertices=verts, faces=faces, z=np.zeros(5), views=[view],
                       losses=[0.4, 0.3, 0.25, 0.24], frames=frames, versions=versions)
    overlay = iio.imread(out / "overlay.png")[..., :3]
    # The figure shows the 160x120 panels at 2x below a title bar.
    blend = overlay[BAR_HEIGHT:BAR_HEIGHT + 2 * camera.height, 4 * camera.width:]
    magenta = (blend == RENDERED_OUTLINE_RGB).all(axis=-1)
    green = (blend == OBSERVED_OUTLINE_RGB).all(axis=-1)
    assert magenta.sum() > 100 and green.sum() > 100
    assert rendered.mask.repeat(2, 0).repeat(2, 1)[magenta].all()
    assert obs.mask.repeat(2, 0).repeat(2, 1)[green].all()
    # The observed bottle is wider: its outline reaches further left/right than the rendering's.
    cols_g, cols_m = np.nonzero(green)[1], np.nonzero(magenta)[1]
    assert cols_g.max() - cols_g.min() > cols_m.max() - cols_m.min()
    assert iio.imread(out / "optimisation.gif").shape[0] == 4
    rec = json.loads((out / "result.json").read_text())
    assert rec["versions"]["gl_renderer"]
    # Reading the observation back is lossless (8-bit PNG).
    np.testing.assert_allclose(observed, np.round(obs.rgb * 255) / 255, atol=1e-6)


def test_to_jsonable_types():
    import torch

    from regtool.io import json_bytes, to_jsonable

    data = {"a": np.float32(1.5), "b": np.arange(3), "c": (1, 2), "d": torch.tensor([0.5, 1.0]),
            "e": float("inf"), "f": pathlib.Path("x/y"), "g": np.bool_(True),
            "h": CameraIntrinsics.from_fov(W, H, 40.0)}
    out = to_jsonable(data)
    assert out["a"] == 1.5 and out["b"] == [0, 1, 2] and out["c"] == [1, 2]
    assert out["d"] == [0.5, 1.0] and out["e"] is None and out["f"] == "x/y"
    assert out["g"] is True and out["h"]["width"] == W
    assert json.loads(json_bytes(data)) == out
    with pytest.raises(TypeError):
        to_jsonable({"bad": object()})
