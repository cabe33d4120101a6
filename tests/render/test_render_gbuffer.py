"""The G-buffer pass: exact face ids, ray-cast barycentrics, depth, row order, no GL leaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from render_testlib import posed_vertices, reference_rasterize, small_camera, view_of

from regtool.errors import RenderError
from regtool.geometry.camera import CameraIntrinsics
from regtool.render.gbuffer import GBuffer, gbuffer_pass, pixel_rays, rasterize

pytestmark = pytest.mark.gl


def _ray_cast(mesh_cam: trimesh.Trimesh, camera: CameraIntrinsics, pixels: np.ndarray):
    """trimesh's first hit along the rays through pixel centres (i, j): face (-1 = miss),
    barycentrics (N, 3) and depth z (N,)."""
    rays = pixel_rays(camera, dtype=torch.float64).numpy()[pixels[:, 0], pixels[:, 1]]
    dirs = rays / np.linalg.norm(rays, axis=1, keepdims=True)
    intersector = trimesh.ray.ray_triangle.RayMeshIntersector(mesh_cam)
    locations, index_ray, index_tri = intersector.intersects_location(
        np.zeros_like(dirs), dirs, multiple_hits=False)
    face = np.full(len(pixels), -1)
    face[index_ray] = index_tri
    bary = np.zeros((len(pixels), 3))
    depth = np.zeros(len(pixels))
    if len(index_ray):
        bary[index_ray] = trimesh.triangles.points_to_barycentric(
            mesh_cam.triangles[index_tri], locations)
        depth[index_ray] = locations[:, 2]
    return face, bary, depth


@pytest.mark.parametrize("mesh_name", ["ellipsoid", "drill"])
def test_face_ids_and_barycentrics_match_trimesh_ray_casting(mesh_name, request):
    mesh = request.getfixturevalue(mesh_name)
    camera = small_camera(96, 80)
    verts = posed_vertices(mesh, view_of(mesh, azimuth=40.0, elevation=25.0))
    gb = rasterize(verts, mesh.faces, camera)
    assert isinstance(gb, GBuffer) and gb.face_id.dtype == torch.int64
    rng = np.random.default_rng(0)
    covered = gb.mask.nonzero().numpy()
    uncovered = (~gb.mask).nonzero().numpy()
    pixels = np.concatenate([covered[rng.choice(len(covered), 300, replace=False)],
                             uncovered[rng.choice(len(uncovered), 100, replace=False)]])
    mesh_cam = trimesh.Trimesh(verts, mesh.faces, process=False)
    face, bary, depth = _ray_cast(mesh_cam, camera, pixels)
    gl_face = gb.face_id.numpy()[pixels[:, 0], pixels[:, 1]] - 1
    gl_bary = gb.bary.numpy()[pixels[:, 0], pixels[:, 1]]
    gl_depth = gb.depth.numpy()[pixels[:, 0], pixels[:, 1]]
    # A ray through a shared edge or vertex may legitimately pick either face.
    clear = (face < 0) | (bary.min(axis=1) > 1e-3)
    assert clear.sum() > 350
    np.testing.assert_array_equal(gl_face[clear], face[clear])
    hit = clear & (face >= 0)
    np.testing.assert_allclose(gl_bary[hit], bary[hit], atol=2e-4)
    np.testing.assert_allclose(gl_depth[hit], depth[hit], rtol=1e-5)
    np.testing.assert_allclose(gl_bary[hit].sum(1), 1.0, atol=1e-5)
    point = gb.point.numpy()[pixels[hit, 0], pixels[hit, 1]]
    expected = (mesh_cam.triangles[face[hit]] * bary[hit][..., None]).sum(1)
    np.testing.assert_allclose(point, expected, atol=1e-5)
    assert (gl_face[face < 0] == -1).all()
    assert (gl_depth[face < 0] == 0).all()


@pytest.mark.parametrize("mesh_name", ["ellipsoid", "drill"])
def test_mask_and_face_ids_match_reference_rasteriser(mesh_name, request):
    """Coverage equals the projected silhouette (pixel centres inside projected triangles) and
    the face ids equal the nearest such triangle, except within 1e-3 px of a projected edge."""
    mesh = request.getfixturevalue(mesh_name)
    camera = small_camera(64, 48)
    verts = posed_vertices(mesh, view_of(mesh, azimuth=-60.0, elevation=10.0))
    gb = rasterize(verts, mesh.faces, camera)
    ref_face, ref_depth, edge = reference_rasterize(verts, np.asarray(mesh.faces), camera)
    clear = edge > 1e-3
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(gb.mask.numpy()[clear], (ref_face > 0)[clear])
    np.testing.assert_array_equal(gb.face_id.numpy()[clear], ref_face[clear])
    np.testing.assert_allclose(gb.depth.numpy()[clear], ref_depth[clear], rtol=1e-5)
    assert 0.05 < gb.mask.float().mean() < 0.9


def test_row_zero_is_the_top_of_the_image():
    """A sphere above the optical axis (OpenCV y < 0) covers the top rows only."""
    camera = small_camera(64, 64)
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.03)
    verts = np.asarray(mesh.vertices) + [0.05, -0.08, 0.4]  # right and up
    gb = rasterize(torch.as_tensor(verts), mesh.faces, camera)
    rows, cols = gb.mask.nonzero().T
    assert rows.max() < 32 and cols.min() >= 32
    u = camera.fx * 0.05 / 0.4 + camera.cx
    v = camera.fy * -0.08 / 0.4 + camera.cy
    assert abs(cols.float().mean() + 0.5 - u) < 1.0 and abs(rows.float().mean() + 0.5 - v) < 1.0


def _probe_names(GL) -> dict[str, int]:
    """Generate and delete one buffer, texture, renderbuffer and framebuffer; return the names
    (GL hands out increasing names, so a leak in between shows as a jump)."""
    names = {"buffer": int(GL.glGenBuffers(1)), "texture": int(GL.glGenTextures(1)),
             "renderbuffer": int(GL.glGenRenderbuffers(1)),
             "framebuffer": int(GL.glGenFramebuffers(1))}
    GL.glDeleteBuffers(1, [names["buffer"]])
    GL.glDeleteTextures([names["texture"]])
    GL.glDeleteRenderbuffers(1, [names["renderbuffer"]])
    GL.glDeleteFramebuffers(1, [names["framebuffer"]])
    return names


def test_vertex_updates_resizes_and_reuploads_reuse_gl_objects(monkeypatch):
    """Moving vertices is visible in the next frame (in-place update, nothing stale); new vertex
    counts and image sizes reuse the same GL object names; no new names are consumed."""
    from OpenGL import GL

    calls = {"glBufferData": 0, "glBufferSubData": 0}
    for name in calls:
        original = getattr(GL, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)
        monkeypatch.setattr(GL, name, counted)

    from regtool.render.context import get_context

    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    verts = np.asarray(mesh.vertices) + [0.0, 0.0, 0.4]
    camera = small_camera(64, 64)
    rasterize(verts, mesh.faces, camera)
    state = gbuffer_pass(get_context())
    names = state.gl_object_names()
    probes = _probe_names(GL)
    calls.update(glBufferData=0, glBufferSubData=0)
    for k in range(3):  # same mesh, moved: sub-data writes only
        rasterize(verts + [0.0, 0.001 * k, 0.0], mesh.faces, camera)
    assert calls == {"glBufferData": 0, "glBufferSubData": 3}
    big = trimesh.creation.icosphere(subdivisions=3, radius=0.05)
    for k in range(6):
        shifted = verts + [0.01 * k, 0.0, 0.0]
        gb = rasterize(shifted, mesh.faces, camera)
        centre = gb.mask.nonzero()[:, 1].float().mean() + 0.5
        expected = camera.fx * 0.01 * k / 0.4 + camera.cx
        assert abs(float(centre) - expected) < 1.0
        rasterize(np.asarray(big.vertices) + [0, 0, 0.4], big.faces, small_camera(80 + k, 48))
    assert state.gl_object_names() == names
    assert all(GL.glIsBuffer(names[k]) for k in ("vbo", "ebo"))
    again = _probe_names(GL)
    for kind in probes:  # only the probes themselves took names in between
        assert again[kind] <= probes[kind] + 1, kind


def test_bad_input_raises_render_error():
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    verts = np.asarray(mesh.vertices) + [0.0, 0.0, 0.4]
    camera = small_camera(32, 32)
    faces = np.asarray(mesh.faces)
    with pytest.raises(RenderError, match="face indices"):
        rasterize(verts, faces + 1000, camera)
    with pytest.raises(RenderError, match="face indices"):
        rasterize(verts, faces - 1, camera)
    bad = verts.copy()
    bad[3, 1] = np.nan
    with pytest.raises(RenderError, match="NaN"):
        rasterize(bad, faces, camera)
    with pytest.raises(RenderError, match="image size"):
        rasterize(verts, faces, CameraIntrinsics(30.0, 30.0, 0.0, 0.0, 0, 32))
    with pytest.raises(RenderError, match="shape"):
        rasterize(verts[:, :2], faces, camera)
    with pytest.raises(RenderError, match="integer"):
        rasterize(verts, faces.astype(float), camera)


def test_nothing_in_view_gives_an_empty_gbuffer():
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    verts = np.asarray(mesh.vertices) + [0.0, 0.0, -0.4]  # behind the camera
    gb = rasterize(verts, mesh.faces, small_camera(32, 32))
    assert not gb.mask.any() and (gb.face_id == 0).all() and (gb.depth == 0).all()


@pytest.mark.parametrize("mesh_name", ["ellipsoid", "drill"])
@pytest.mark.parametrize("size", [(96, 80), (160, 120)])
def test_pyrender_observation_and_gbuffer_agree(mesh_name, size, request):
    """The photo-like observation's mask (pyrender, what evaluate and train-unet see; coverage
    alpha >= 0.5, train-unet's label; its depth > 0 was 0.35 px off before) and the
    differentiable renderer's G-buffer (what register renders) cover the same pixels: they
    differ only on the silhouette's boundary, and the centroids agree to a fraction of a pixel
    (a half-pixel convention slip would shift them by 0.5 px, a flipped row order by many)."""
    from scipy.ndimage import binary_dilation, binary_erosion, maximum_filter, minimum_filter

    from regtool.render.shading import render_shaded

    mesh = request.getfixturevalue(mesh_name)
    camera = small_camera(*size)
    pose = view_of(mesh, azimuth=50.0, elevation=25.0)
    observed = render_shaded(np.asarray(mesh.vertices), np.asarray(mesh.faces), pose, camera)
    gb = rasterize(posed_vertices(mesh, pose), np.asarray(mesh.faces), camera)
    a, b = observed.mask, gb.mask.numpy()  # the mask render-view writes (alpha >= 0.5)
    assert a.sum() > 200 and b.sum() > 200
    boundary = binary_dilation(b) & ~binary_erosion(b)
    assert not ((a ^ b) & ~boundary).any()  # disagreement only on the silhouette's boundary
    assert (a & b).sum() / (a | b).sum() > 0.96

    def centroid(m):
        rows, cols = np.nonzero(m)
        return np.array([cols.mean(), rows.mean()])

    assert np.abs(centroid(a) - centroid(b)).max() < 0.2
    # pyrender's depth agrees with the G-buffer's inside the object, away from depth steps
    # (its depth is one multisample of the pixel, up to 0.4 px off the centre: docs/experiments.md).
    depth = gb.depth.numpy()
    smooth = (maximum_filter(depth, 3) - minimum_filter(depth, 3)) < 1e-2
    inside = binary_erosion(b, iterations=2) & observed.mask & smooth
    assert inside.sum() > 40
    np.testing.assert_allclose(observed.depth[inside], depth[inside], atol=3e-3)
