"""The differentiable renderer: shapes, gradients vs central finite differences, descent,
the two public backward parts, occlusion edges, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from render_testlib import small_camera, view_of

from regtool.errors import RenderError
from regtool.geometry.camera import CameraIntrinsics, axis_angle_to_matrix
from regtool.render.diff import (
    DiffRenderSettings,
    diff_render,
    field_to_vertex_gradients,
    image_gradient_field,
)
from regtool.render.gbuffer import rasterize

pytestmark = pytest.mark.gl


def _pose_torch(mesh: trimesh.Trimesh, azimuth: float, elevation: float, distance: float):
    pose = view_of(mesh, distance=distance, azimuth=azimuth, elevation=elevation)
    return (torch.as_tensor(pose.rotation), torch.as_tensor(pose.translation))


def _deformation_fields(mesh: trimesh.Trimesh) -> torch.Tensor:
    """Return (3, V, 3): three smooth displacement fields (Gaussian bumps of width half the
    object size along different axes), unit peak displacement, object frame."""
    v = torch.as_tensor(np.asarray(mesh.vertices))
    lo, hi = (torch.tensor(mesh.bounds[0].tolist(), dtype=torch.float64),
              torch.tensor(mesh.bounds[1].tolist(), dtype=torch.float64))
    size = float((hi - lo).max())
    fields = []
    for centre_frac, axis in (((0.8, 0.5, 0.5), 0), ((0.3, 0.3, 0.7), 1), ((0.5, 0.8, 0.2), 2)):
        centre = lo + torch.tensor(centre_frac, dtype=torch.float64) * (hi - lo)
        weight = torch.exp(-((v - centre) ** 2).sum(-1) / (2 * (0.5 * size) ** 2))
        d = torch.zeros_like(v)
        d[:, axis] = weight
        fields.append(d)
    return torch.stack(fields)


class _Scene:
    """Camera-frame vertices as a function of 3 parameters: a camera-frame translation, an
    axis-angle rotation about the object origin (camera frame), or 3 smooth deformations."""

    def __init__(self, mesh, kind, camera, azimuth=35.0, elevation=20.0, distance=0.45):
        self.mesh, self.kind, self.camera = mesh, kind, camera
        self.faces = torch.as_tensor(np.asarray(mesh.faces))
        self.v0 = torch.as_tensor(np.asarray(mesh.vertices))
        self.rot, self.trans = _pose_torch(mesh, azimuth, elevation, distance)
        self.fields = _deformation_fields(mesh)
        size = float(np.ptp(mesh.bounds, axis=0).max())
        # steps of about one pixel of image motion at this distance
        pixel = distance / camera.fy
        self.step = {"translation": 1.0 * pixel, "rotation": 1.0 * pixel / (0.5 * size),
                     "deformation": 1.5 * pixel}[kind]

    def vertices(self, theta: torch.Tensor) -> torch.Tensor:
        v = self.v0
        if self.kind == "deformation":
            v = v + torch.einsum("k,kvc->vc", theta, self.fields)
        v = v @ self.rot.T + self.trans
        if self.kind == "rotation":
            v = (v - self.trans) @ axis_angle_to_matrix(theta).T + self.trans
        if self.kind == "translation":
            v = v + theta
        return v


def _loss_and_fd(scene: _Scene, settings: DiffRenderSettings, theta_target: torch.Tensor):
    """Return (analytic gradient, central finite differences) of the mean squared image error
    to the rendering at `theta_target`, at theta = 0."""
    with torch.no_grad():
        target, _ = diff_render(scene.vertices(theta_target), scene.faces, scene.camera, settings)

    def loss(theta):
        image, _ = diff_render(scene.vertices(theta), scene.faces, scene.camera, settings)
        return ((image - target) ** 2).mean()

    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    loss(theta).backward()
    fd = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for k in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[k] = scene.step
            fd[k] = (loss(e) - loss(-e)) / (2 * scene.step)
    return theta.grad, fd


@pytest.mark.parametrize("image_type", ["rgb", "mask"])
@pytest.mark.parametrize("kind", ["translation", "rotation", "deformation"])
@pytest.mark.parametrize("mesh_name", ["ellipsoid", "drill"])
def test_gradient_matches_central_finite_differences(mesh_name, kind, image_type, request):
    mesh = request.getfixturevalue(mesh_name)
    scene = _Scene(mesh, kind, small_camera(128, 112))
    # a target a few pixels away in every parameter
    theta_target = {"translation": torch.tensor([0.012, -0.009, 0.02]),
                    "rotation": torch.tensor([0.08, -0.1, 0.06]),
                    "deformation": torch.tensor([0.012, -0.01, 0.012])}[kind].double()
    grad, fd = _loss_and_fd(scene, DiffRenderSettings(image_type=image_type), theta_target)
    cosine = float(torch.dot(grad, fd) / (grad.norm() * fd.norm()))
    ratio = float(grad.norm() / fd.norm())
    assert cosine >= 0.9, (grad, fd)
    assert 0.5 <= ratio <= 2.0, (grad, fd)


def test_interior_rgb_gradient_matches_finite_differences(ellipsoid):
    """Shading only (silhouette pixels excluded by a fixed weight map): the Sobel term and the
    shading-normal term together match finite differences."""
    scene = _Scene(ellipsoid, "rotation", small_camera(128, 112))
    settings = DiffRenderSettings(image_type="rgb", light_direction=(0.8, 0.3, 0.6))
    with torch.no_grad():
        target, mask_t = diff_render(scene.vertices(torch.tensor([0.05, -0.06, 0.04]).double()),
                                     scene.faces, scene.camera, settings)
        _, mask0 = diff_render(scene.vertices(torch.zeros(3).double()), scene.faces,
                               scene.camera, settings)
    both = (mask_t & mask0).double()[None, None]
    weight = -torch.nn.functional.max_pool2d(-both, 9, stride=1, padding=4)[0, 0]  # erode 4 px
    assert weight.sum() > 500

    def loss(theta):
        image, _ = diff_render(scene.vertices(theta), scene.faces, scene.camera, settings)
        return (weight * ((image - target) ** 2).sum(0)).sum() / weight.sum()

    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    loss(theta).backward()
    fd = torch.zeros(3, dtype=torch.float64)
    h = scene.step
    with torch.no_grad():
        for k in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[k] = h
            fd[k] = (loss(e) - loss(-e)) / (2 * h)
    cosine = float(torch.dot(theta.grad, fd) / (theta.grad.norm() * fd.norm()))
    assert cosine >= 0.9, (theta.grad, fd)
    assert 0.5 <= float(theta.grad.norm() / fd.norm()) <= 2.0, (theta.grad, fd)


@pytest.mark.parametrize("image_type", ["rgb", "mask"])
def test_descent_on_translation_recovers_the_target(ellipsoid, image_type):
    camera = small_camera(96, 80)
    scene = _Scene(ellipsoid, "translation", camera)
    settings = DiffRenderSettings(image_type=image_type)
    t_true = torch.tensor([0.025, -0.02, 0.0], dtype=torch.float64)
    with torch.no_grad():
        target, _ = diff_render(scene.vertices(t_true), scene.faces, camera, settings)
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([t], lr=0.003)
    start = float(t_true.norm())
    for _ in range(40):
        optimiser.zero_grad()
        image, _ = diff_render(scene.vertices(t), scene.faces, camera, settings)
        ((image - target) ** 2).mean().backward()
        optimiser.step()
    assert float((t.detach() - t_true).norm()) <= start / 5.0, t


def test_shapes_dtypes_and_batches(ellipsoid):
    camera = small_camera(48, 40)
    scene = _Scene(ellipsoid, "translation", camera)
    v = scene.vertices(torch.zeros(3, dtype=torch.float64))
    image, mask = diff_render(v, scene.faces, camera)
    assert image.shape == (3, 40, 48) and mask.shape == (40, 48) and mask.dtype == torch.bool
    assert image.dtype == torch.float64 and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert float(image[:, mask].min()) > 0.1  # lit object over a black background
    image_m, _ = diff_render(v.float(), scene.faces, camera, DiffRenderSettings("mask"))
    assert image_m.shape == (1, 40, 48) and torch.equal(image_m[0] > 0.5, mask)
    normals, _ = diff_render(v, scene.faces, camera, DiffRenderSettings("normals"))
    n = normals[:, mask] * 2 - 1
    assert torch.allclose(n.norm(dim=0), torch.ones(()).double(), atol=1e-3)
    # normals face the camera: against the viewing ray to the surface point
    point = rasterize(v, scene.faces, camera).point[mask].double()
    assert float((n.T * point).sum(-1).max()) < 0.0
    batch = torch.stack([v, v + torch.tensor([0.02, 0.0, 0.0]).double()])
    images, masks = diff_render(batch, scene.faces, camera)
    assert images.shape == (2, 3, 40, 48) and masks.shape == (2, 40, 48)
    assert torch.allclose(images[0], image)
    two_cams = [camera, CameraIntrinsics(camera.fx * 1.2, camera.fy * 1.2, camera.cx,
                                         camera.cy, 48, 40)]
    images, masks = diff_render(v, scene.faces, two_cams)
    assert images.shape == (2, 3, 40, 48) and masks[1].sum() > masks[0].sum()


def test_multi_view_gradient_is_the_sum_of_single_views(ellipsoid):
    camera = small_camera(48, 40)
    scene = _Scene(ellipsoid, "translation", camera)
    views = [scene.vertices(torch.tensor([0.0, 0.0, 0.0]).double()),
             scene.vertices(torch.tensor([0.01, 0.02, 0.0]).double())]
    grads = []
    for v in views:
        v = v.clone().requires_grad_(True)
        image, _ = diff_render(v, scene.faces, camera)
        (image ** 2).sum().backward()
        grads.append(v.grad)
    batch = torch.stack(views).requires_grad_(True)
    images, _ = diff_render(batch, scene.faces, [camera, camera])
    (images ** 2).sum().backward()
    assert torch.allclose(batch.grad[0], grads[0], atol=1e-6)
    assert torch.allclose(batch.grad[1], grads[1], atol=1e-6)


def test_image_gradient_field_is_minus_loss_gradient_times_sobel():
    h, w = 12, 16
    u = torch.arange(w, dtype=torch.float64) + 0.5
    image = (0.02 * u[None, None, :] + torch.zeros(2, h, 1, dtype=torch.float64))  # ramp in u
    grad = torch.ones_like(image)
    grad[1] *= 3.0
    field = image_gradient_field(grad, image)
    assert field.shape == (h, w, 2)
    # interior: dI/du = 0.02 per pixel in both channels, dI/dv = 0
    assert torch.allclose(field[1:-1, 1:-1, 0], torch.full((h - 2, w - 2), -0.02 * 4.0,
                                                           dtype=torch.float64))
    assert torch.allclose(field[..., 1], torch.zeros(h, w, dtype=torch.float64))
    batch = image_gradient_field(grad[None].expand(3, -1, -1, -1), image[None].expand(3, -1, -1,
                                                                                        -1))
    assert batch.shape == (3, h, w, 2)


def test_field_to_vertex_gradients_applies_the_projection_jacobian(ellipsoid):
    """Barycentrics sum to one, so the summed vertex gradients are the translation gradient:
    sum over pixels of J(X_p)^T F_p."""
    camera = small_camera(64, 48)
    scene = _Scene(ellipsoid, "translation", camera)
    v = scene.vertices(torch.zeros(3, dtype=torch.float64))
    gb = rasterize(v, scene.faces, camera)
    rng = torch.Generator().manual_seed(0)
    field = torch.randn(48, 64, 2, generator=rng, dtype=torch.float64) * gb.mask[..., None]
    grads = field_to_vertex_gradients(field, gb, v, camera, scene.faces, dilation=0,
                                      occlusion_tolerance=0.5)
    assert grads.shape == v.shape and grads.dtype == v.dtype
    p = gb.point[gb.mask].double()
    f = field[gb.mask]
    x, y, z = p.unbind(-1)
    expected = torch.stack([camera.fx * f[:, 0] / z, camera.fy * f[:, 1] / z,
                            -(camera.fx * x * f[:, 0] + camera.fy * y * f[:, 1]) / z ** 2], -1)
    assert torch.allclose(grads.sum(0), expected.sum(0), rtol=1e-4)


def test_silhouette_pixels_take_the_nearest_covered_surface_point():
    """A field on a pixel just outside the object reaches the face of its covered neighbour,
    and nothing reaches any vertex from farther than the dilation."""
    camera = small_camera(32, 32)
    verts = torch.tensor([[-0.05, -0.05, 0.4], [0.05, -0.05, 0.4], [0.05, 0.05, 0.4],
                          [-0.05, 0.05, 0.4]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    gb = rasterize(verts, faces, camera)
    cols = gb.mask.any(0).nonzero().squeeze(1)
    right = int(cols.max())
    field = torch.zeros(32, 32, 2, dtype=torch.float64)
    field[16, right + 2, 0] = 1.0
    assert (field_to_vertex_gradients(field, gb, verts, camera, faces, dilation=2)
            [:, 0] > 0).any()
    assert torch.all(field_to_vertex_gradients(field, gb, verts, camera, faces, dilation=1) == 0)


def test_occlusion_edges_get_no_gradient():
    """A near square half-covering a far one: far-surface pixels next to the near square's edge
    give nothing; far-surface pixels away from it do."""
    camera = small_camera(64, 64)
    far = [[-0.1, -0.1, 0.6], [0.1, -0.1, 0.6], [0.1, 0.1, 0.6], [-0.1, 0.1, 0.6]]
    near = [[-0.2, -0.2, 0.3], [0.0, -0.2, 0.3], [0.0, 0.2, 0.3], [-0.2, 0.2, 0.3]]
    verts = torch.tensor(far + near, dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    gb = rasterize(verts, faces, camera)
    near_cols = (gb.depth[32] < 0.45) & gb.mask[32]
    edge = int(near_cols.nonzero().max()) + 1  # first far-surface column right of the edge
    assert float(gb.depth[32, edge]) > 0.55
    field = torch.zeros(64, 64, 2, dtype=torch.float64)
    field[24:40, edge, 0] = 1.0
    grads = field_to_vertex_gradients(field, gb, verts, camera, faces)
    assert torch.all(grads == 0)
    field = torch.zeros(64, 64, 2, dtype=torch.float64)
    field[24:40, edge + 4, 0] = 1.0
    grads = field_to_vertex_gradients(field, gb, verts, camera, faces)
    assert grads[:4, 0].sum() > 0 and torch.all(grads[4:] == 0)


def test_a_camera_seeing_nothing_warns_and_gives_zero_gradient(ellipsoid):
    camera = small_camera(32, 32)
    v = torch.as_tensor(np.asarray(ellipsoid.vertices)) + torch.tensor([0.0, 0.0, -1.0]).double()
    v.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="covers no pixel"):
        image, mask = diff_render(v, ellipsoid.faces, camera)
    (image - 0.5).pow(2).sum().backward()
    assert not mask.any() and torch.all(v.grad == 0)


def test_bad_input_raises_render_error(ellipsoid):
    camera = small_camera(32, 32)
    v = torch.as_tensor(np.asarray(ellipsoid.vertices)) + torch.tensor([0.0, 0.0, 0.5]).double()
    faces = np.asarray(ellipsoid.faces)
    with pytest.raises(RenderError, match="face indices"):
        diff_render(v, faces + len(v), camera)
    bad = v.clone()
    bad[0, 0] = math.nan
    with pytest.raises(RenderError, match="NaN"):
        diff_render(bad, faces, camera)
    with pytest.raises(RenderError, match="image size"):
        diff_render(v, faces, CameraIntrinsics(20.0, 20.0, 16.0, 16.0, 32, 0))
    with pytest.raises(RenderError, match="do not match"):
        diff_render(torch.stack([v, v, v]), faces, [camera, camera])
    with pytest.raises(RenderError, match="image_type"):
        DiffRenderSettings(image_type="depth")
    with pytest.raises(RenderError, match="torch tensor"):
        diff_render(v.numpy(), faces, camera)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_vertices_give_cuda_results_and_gradients(ellipsoid):
    camera = small_camera(48, 40)
    scene = _Scene(ellipsoid, "translation", camera)
    v_cpu = scene.vertices(torch.zeros(3, dtype=torch.float64)).float()
    v = v_cpu.cuda().requires_grad_(True)
    image, mask = diff_render(v, scene.faces, camera)
    assert image.is_cuda and mask.is_cuda
    image.pow(2).sum().backward()
    v_cpu.requires_grad_(True)
    image_cpu, _ = diff_render(v_cpu, scene.faces, camera)
    image_cpu.pow(2).sum().backward()
    assert torch.allclose(v.grad.cpu(), v_cpu.grad, rtol=1e-3, atol=1e-5)


def test_vertex_normal_backward_matches_autograd(ellipsoid):
    from regtool.render.diff import _Normals, vertex_normals

    v = torch.as_tensor(np.asarray(ellipsoid.vertices)).clone()
    faces = torch.as_tensor(np.asarray(ellipsoid.faces))
    grad_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
    normals = _Normals.compute(v, faces)
    # Against an independent numpy sum of the face cross products (area-weighted normals).
    vn, fn = v.numpy(), faces.numpy()
    cross = np.cross(vn[fn[:, 1]] - vn[fn[:, 0]], vn[fn[:, 2]] - vn[fn[:, 0]])
    acc = np.zeros_like(vn)
    for k in range(3):
        np.add.at(acc, fn[:, k], cross)
    reference = acc / np.linalg.norm(acc, axis=1, keepdims=True)
    np.testing.assert_allclose(vertex_normals(v, faces).numpy(), reference, atol=1e-12)
    assert float((reference * (vn - vn.mean(0))).sum(1).min()) > 0  # outward on the ellipsoid
    v.requires_grad_(True)
    (expected,) = torch.autograd.grad(vertex_normals(v, faces), v, grad_out)
    assert torch.allclose(normals.backward(grad_out), expected, atol=1e-10)
    grad_out[v.detach()[:, 0] > 0.03] = 0.0  # gradient on half of the normals only
    (expected,) = torch.autograd.grad(vertex_normals(v, faces), v, grad_out)
    assert torch.allclose(normals.backward(grad_out), expected, atol=1e-10)
