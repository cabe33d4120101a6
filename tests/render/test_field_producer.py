"""The pluggable backward of the differentiable renderer: a field producer chosen per call
(`DiffRenderSettings.field_producer`) and the propagation that takes any field to the vertices
(`field_to_vertex_gradients`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from render_testlib import small_camera

from regtool.errors import RenderError
from regtool.render.diff import (
    DiffRenderSettings,
    FieldContext,
    diff_render,
    field_to_vertex_gradients,
    image_gradient_field,
)
from regtool.render.gbuffer import rasterize

pytestmark = pytest.mark.gl


def _box(z: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-frame vertices (V, 3) float64 of a 0.2 m cube centred on the optical axis at
    depth z (only its front face, at z - 0.1, is seen), and its faces (F, 3) int64."""
    mesh = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    v = torch.as_tensor(np.asarray(mesh.vertices)) + torch.tensor([0.0, 0.0, z])
    return v, torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)


def _translation_producer(du: float, dv: float):
    """An oracle producer: the field of a pure 2D image translation, F = (du, dv) on every
    covered pixel and 0 elsewhere (whatever dL/dI is)."""

    def produce(grad_image, image, context: FieldContext) -> torch.Tensor:
        mask = context.gbuffer.mask.to(image.device)
        field = torch.zeros(*mask.shape, 2, dtype=torch.float32, device=image.device)
        field[mask] = torch.tensor([du, dv], dtype=torch.float32, device=image.device)
        return field

    return produce


def _moment(vertices: torch.Tensor, faces: torch.Tensor, camera, du: float, dv: float) -> float:
    """Return sum over covered pixels of (du, dv) . (u - cx, v - cy) (pixel centres): its
    derivative with respect to a 3D translation is what the translation field (du, dv) on the
    covered pixels stands for."""
    gb = rasterize(vertices, faces, camera)
    rows, cols = torch.nonzero(gb.mask, as_tuple=True)
    return float(du * (cols.double() + 0.5 - camera.cx).sum()
                 + dv * (rows.double() + 0.5 - camera.cy).sum())


@pytest.mark.parametrize("du,dv", [(1.0, 0.0), (0.0, 1.0), (0.6, -0.8)])
def test_oracle_translation_field_gives_the_translation_gradient(du, dv):
    """The field of an image translation (du, dv) on the covered pixels of a cube seen
    face-on (all at the front face's depth Z), propagated to the vertices, sums to the
    translation gradient N (fx du / Z, fy dv / Z, 0) (N covered pixels), which is also the
    central finite difference of the covered pixels' moment (du, dv) . (u - cx, v - cy) (steps
    of 2 pixels of image motion)."""
    camera = small_camera(64, 64)
    v, faces = _box()
    z_front = 0.4
    settings = DiffRenderSettings(image_type="mask", field_producer=_translation_producer(du, dv))
    x = v.clone().requires_grad_(True)
    image, mask = diff_render(x, faces, camera, settings)
    image.sum().backward()  # any loss: the oracle producer ignores dL/dI
    grad = x.grad.sum(0)  # barycentrics sum to 1: the gradient of a rigid translation
    n = int(mask.sum())
    assert 1000 < n < 64 * 64
    analytic = torch.tensor([n * camera.fx * du / z_front, n * camera.fy * dv / z_front, 0.0],
                            dtype=torch.float64)
    scale = float(analytic.norm())
    assert torch.allclose(grad, analytic, rtol=1e-4, atol=1e-3 * scale), (grad, analytic)
    fd = []
    for axis in range(3):
        e = torch.zeros(3, dtype=v.dtype)
        e[axis] = 2.0 * z_front / (camera.fx if axis != 1 else camera.fy)
        fd.append((_moment(v + e, faces, camera, du, dv)
                   - _moment(v - e, faces, camera, du, dv)) / (2 * float(e[axis])))
    fd = torch.tensor(fd, dtype=torch.float64)
    assert torch.allclose(grad, fd, atol=0.02 * scale), (grad, fd)


def test_a_producer_gets_its_view_and_its_field_reaches_the_vertices_unchanged(ellipsoid):
    """A producer is called once per view with that view's G-buffer, camera, vertices and
    crop; the vertex gradients are exactly the propagation of the field it returns."""
    camera = small_camera(48, 40)
    v0 = torch.as_tensor(np.asarray(ellipsoid.vertices), dtype=torch.float32)
    views = torch.stack([v0 + torch.tensor([0.0, 0.0, 0.5]), v0 + torch.tensor([0.02, 0.0, 0.6])])
    faces = torch.as_tensor(np.asarray(ellipsoid.faces), dtype=torch.int64)
    seen = []

    def produce(grad_image, image, context: FieldContext) -> torch.Tensor:
        rng = torch.Generator().manual_seed(context.view)
        field = torch.zeros(context.gbuffer.height, context.gbuffer.width, 2)
        rows, cols = context.region
        field[rows, cols] = torch.randn(rows.stop - rows.start, cols.stop - cols.start, 2,
                                        generator=rng)
        seen.append((context, field))
        return field

    settings = DiffRenderSettings(image_type="mask", field_producer=produce)
    x = views.clone().requires_grad_(True)
    image, mask = diff_render(x, faces, [camera, camera], settings)
    (image ** 2).sum().backward()
    assert [c.view for c, _ in seen] == [0, 1]
    for b, (context, field) in enumerate(seen):
        assert context.camera == camera and context.settings == settings
        assert torch.equal(context.gbuffer.mask, mask[b].cpu())
        assert torch.equal(context.vertices, views[b])
        expected = field_to_vertex_gradients(field, context.gbuffer, views[b], camera, faces,
                                             settings.dilation, settings.occlusion_tolerance)
        assert expected.abs().sum() > 0
        assert torch.equal(x.grad[b], expected)


def _crop_field(grad_image, image, mask, margin):
    """The field of the backward before producers existed (a copy of its inline code): zero
    outside the mask's bounding box grown by `margin`, the Sobel field of the crop inside."""
    h, w = mask.shape
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    rs = slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, h))
    cs = slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, w))
    field = torch.zeros(h, w, 2, dtype=torch.float32)
    field[rs, cs] = image_gradient_field(grad_image[:, rs, cs], image[:, rs, cs])
    return field


@pytest.mark.parametrize("image_type", ["rgb", "normals", "mask"])
def test_the_default_producer_gives_the_previous_gradients_bit_for_bit(ellipsoid, image_type):
    """The default producer is the previous inline field: the default backward and a producer
    computing that field independently give identical gradients; for masks (no shading term)
    they are exactly the propagation of that field."""
    camera = small_camera(64, 48)
    v = torch.as_tensor(np.asarray(ellipsoid.vertices)) + torch.tensor([0.01, 0.0, 0.45])
    faces = torch.as_tensor(np.asarray(ellipsoid.faces), dtype=torch.int64)
    default = DiffRenderSettings(image_type=image_type, light_direction=(0.8, 0.3, 0.6))
    with torch.no_grad():
        target, _ = diff_render(v + torch.tensor([0.004, -0.003, 0.002]).double(), faces,
                                camera, default)
    fields = []

    def previous(grad_image, image, context: FieldContext) -> torch.Tensor:
        fields.append(_crop_field(grad_image, image, context.gbuffer.mask,
                                  default.dilation + 2))
        return fields[-1]

    grads = []
    for settings in (default, DiffRenderSettings(image_type=image_type,
                                                 light_direction=(0.8, 0.3, 0.6),
                                                 field_producer=previous)):
        x = v.clone().requires_grad_(True)
        image, _ = diff_render(x, faces, camera, settings)
        ((image - target) ** 2).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[0], grads[1])
    if image_type == "mask":
        gb = rasterize(v.float(), faces, camera)
        assert torch.equal(grads[0], field_to_vertex_gradients(fields[0], gb, v, camera, faces))


def test_a_bad_producer_is_a_render_error(ellipsoid):
    camera = small_camera(32, 32)
    v = torch.as_tensor(np.asarray(ellipsoid.vertices)) + torch.tensor([0.0, 0.0, 0.5])
    with pytest.raises(RenderError, match="field_producer must be callable"):
        DiffRenderSettings(field_producer="sobel")
    settings = DiffRenderSettings(field_producer=lambda g, i, c: torch.zeros(32, 32))
    x = v.clone().requires_grad_(True)
    image, _ = diff_render(x, ellipsoid.faces, camera, settings)
    with pytest.raises(RenderError, match=r"must return a float tensor \(32, 32, 2\)"):
        image.sum().backward()
