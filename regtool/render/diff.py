"""The differentiable renderer (StilllebenDR, Sec. 3.1): OpenGL forward, PyTorch backward.

Forward: `gbuffer.rasterize` (OpenGL) gives per pixel the visible face, its barycentrics and the
surface point; the image is then shaded in torch from smooth vertex normals interpolated with
those barycentrics ("rgb": Lambert + ambient, "normals": the normal map, "mask": coverage).

Backward: the true gradient dL/dV (not a descent direction; any torch optimiser can use it) is
the sum of two terms, for I_p = A(s_p(V); V), the attribute A at the surface point s_p seen at
pixel p:
1. the attribute term dA/dV at a fixed surface point (the smooth vertex normals used for
   shading turn with the vertices): dL/dn per pixel, scattered to the vertex normals with the
   barycentrics, then through the normalisation and the face cross products (hand-written,
   checked against autograd in the tests; zero for masks);
2. the screen-space term (StilllebenDR): moving the surface by delta pixels shifts the image
   content with it, dI_p = -grad I_p . delta, so with the per-pixel field
   F_p = dL/d(u_p, v_p) = -sum_c dL/dI_{c,p} * Sobel(I_c)_p            (`image_gradient_field`)
   each vertex i of the face seen at p receives b_i(p) * J_pi(X_p)^T F_p, J_pi the 2x3 Jacobian
   of the pinhole projection at the surface point X_p        (`field_to_vertex_gradients`).
   Pixels just outside the silhouette take the surface point of their nearest covered pixel
   (dilated mask), so silhouettes move; pixels next to a closer, different surface (occlusion
   edges) get no gradient.
   The two halves are separate: a *field producer* ((dL/dI, I, `FieldContext`) -> F, chosen
   per call by `DiffRenderSettings.field_producer`; `image_gradient_producer` by default, a
   learned correspondence field can take its place) and the *propagation* F -> dL/dV
   (`field_to_vertex_gradients`, the same for every producer; it can also be called directly).

Image types: each has its own forward shading (`_shade_rgb`, `_shade_normals`, `_shade_mask`)
and backward dL/dn (`_rgb_rows`, `_normals_rows`; masks have no attribute term), listed in
`_IMAGE_TYPE_SHADERS`.

Shapes: V vertices, F faces, B views, C channels (3 for rgb/normals, 1 for mask), H x W pixels;
images are channels-first, rows top to bottom, float in [0, 1].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as TF

from regtool.errors import RenderError
from regtool.geometry.camera import CameraIntrinsics
from regtool.render.gbuffer import GBuffer, pixel_rays, rasterize

IMAGE_TYPES = ("rgb", "normals", "mask")


@dataclass(frozen=True)
class FieldContext:
    """What a field producer gets besides dL/dI and I, for one view b of a `diff_render` call:
    the view's G-buffer and camera, its camera-frame vertices (V, 3) (OpenCV, metres; detached,
    as rasterised), the faces (F, 3) int64, the settings, the view index, and `region` = (rows,
    cols): the bounding box of the covered pixels grown by `dilation` + 2 pixels. The
    propagation reads nothing outside `region` (no pixel there is covered or within the
    silhouette band), so a producer may leave the field zero there."""

    gbuffer: GBuffer
    camera: CameraIntrinsics
    vertices: torch.Tensor
    faces: torch.Tensor
    settings: "DiffRenderSettings"
    region: tuple[slice, slice]
    view: int


# A field producer: (grad_image (C, H, W) = dL/dI, image (C, H, W) = I, context) -> the field
# F (H, W, 2) = dL/d(u, v) per pixel (loss units per pixel, u right, v down) that
# `field_to_vertex_gradients` takes to the vertices; `image_gradient_producer` is the default.
FieldProducer = Callable[[torch.Tensor, torch.Tensor, FieldContext], torch.Tensor]


def image_gradient_field(grad_image: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Return F (..., H, W, 2) = dL/d(u, v): the loss gradient with respect to a motion of the
    surface point seen at each pixel, in loss units per pixel, (u right, v down).

    grad_image, image: (..., C, H, W) dL/dI and the rendered image I. Moving the surface by
    delta pixels shifts the image content with it, I_p -> I_p - grad I_p . delta, hence
    F_p = -sum_c dL/dI_{c,p} * (dI_c/du, dI_c/dv)_p, with the image derivatives from 3x3 Sobel
    filters normalised to units per pixel (edge-replicated borders).
    """
    if grad_image.shape != image.shape or image.dim() < 3:
        raise RenderError(f"grad_image and image must both be (..., C, H, W), "
                          f"got {tuple(grad_image.shape)} and {tuple(image.shape)}")
    lead, (c, h, w) = image.shape[:-3], image.shape[-3:]
    x = image.reshape(-1, h, w).to(grad_image.dtype)
    p = TF.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]  # (N*C, H+2, W+2)
    # Separable Sobel: central difference along one axis, (1, 2, 1) / 4 smoothing along the
    # other; = the 3x3 kernels [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] / 8 and their transpose.
    du = p[:, :, 2:] - p[:, :, :-2]  # (N*C, H+2, W)
    du = torch.add(du[:, :-2], du[:, 2:]).add_(du[:, 1:-1], alpha=2.0)
    dv = p[:, 2:, :] - p[:, :-2, :]  # (N*C, H, W+2)
    dv = torch.add(dv[:, :, :-2], dv[:, :, 2:]).add_(dv[:, :, 1:-1], alpha=2.0)
    g = grad_image.reshape(-1, h, w) * -0.125  # the Sobel normalisation and the sign
    field = torch.stack([du.mul_(g).reshape(-1, c, h, w).sum(1),
                         dv.mul_(g).reshape(-1, c, h, w).sum(1)], dim=-1)  # (N, H, W, 2)
    return field.reshape(*lead, h, w, 2)


def image_gradient_producer(grad_image: torch.Tensor, image: torch.Tensor,
                            context: FieldContext) -> torch.Tensor:
    """The default field producer (StilllebenDR): return F (H, W, 2) float32, zero outside
    `context.region` and `image_gradient_field(grad_image, image)` of the crop inside it."""
    rows, cols = context.region
    field = torch.zeros(context.gbuffer.height, context.gbuffer.width, 2, dtype=torch.float32,
                        device=image.device)
    field[rows, cols] = image_gradient_field(grad_image[:, rows, cols], image[:, rows, cols])
    return field


@dataclass(frozen=True)
class DiffRenderSettings:
    """Settings of `diff_render`.

    * image_type: "rgb" (Lambert + ambient, smooth normals), "normals" (camera-frame unit normal
      n mapped to colour (n + 1) / 2) or "mask" (1 on the object, 0 elsewhere, one channel).
    * light_direction: direction the light travels, OpenCV camera frame (fixed to the camera,
      as `shading.Light`); albedo, ambient, diffuse: rgb = albedo * (ambient + diffuse *
      max(0, n . -light)), clamped to [0, 1]. background: RGB of uncovered pixels (rgb and
      normals; the mask background is 0).
    * dilation: silhouette band in pixels; uncovered pixels within this Chebyshev distance of the
      object take the surface point of their nearest covered pixel in the backward pass.
    * occlusion_tolerance: relative depth step (fraction of the pixel's depth) above which a
      neighbouring pixel counts as a closer, different surface (no gradient at that pixel).
    * znear, zfar: clipping distances, metres.
    * field_producer: the per-pixel 2D field of the backward's screen-space term (see
      `FieldProducer`; default `image_gradient_producer`, e.g. a learned correspondence field
      instead); the propagation to the vertices is the same for every producer.
    """

    image_type: str = "rgb"
    light_direction: tuple[float, float, float] = (0.3, 0.5, 1.0)
    albedo: tuple[float, float, float] = (0.7, 0.7, 0.72)
    ambient: float = 0.3
    diffuse: float = 0.7
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    dilation: int = 2
    occlusion_tolerance: float = 0.01
    znear: float = 0.01
    zfar: float = 100.0
    field_producer: FieldProducer = image_gradient_producer

    def __post_init__(self):
        if self.image_type not in IMAGE_TYPES:
            raise RenderError(f"image_type must be one of {', '.join(IMAGE_TYPES)}, "
                              f"got {self.image_type!r}")
        if len(self.light_direction) != 3 or not all(map(math.isfinite, self.light_direction)) \
                or sum(x * x for x in self.light_direction) == 0:
            raise RenderError(f"light_direction must be a finite non-zero 3-vector, "
                              f"got {self.light_direction}")
        if self.dilation < 0:
            raise RenderError(f"dilation must be >= 0 pixels, got {self.dilation}")
        if not 0.0 <= self.occlusion_tolerance < 1.0:
            raise RenderError(f"occlusion_tolerance must be in [0, 1), "
                              f"got {self.occlusion_tolerance}")
        if not 0.0 < self.znear < self.zfar:
            raise RenderError(f"need 0 < znear < zfar, got {self.znear}, {self.zfar}")
        if not callable(self.field_producer):
            raise RenderError(f"field_producer must be callable, got {self.field_producer!r}")

    @property
    def channels(self) -> int:
        return 1 if self.image_type == "mask" else 3

    @classmethod
    def from_config(cls, config, **overrides) -> "DiffRenderSettings":
        """Return settings from a `config.RenderConfig` (silhouette dilation, lighting, albedo,
        occlusion tolerance), with `overrides` (e.g. image_type) on top."""
        values = {"dilation": config.silhouette_dilation,
                  "light_direction": tuple(config.light_direction),
                  "albedo": tuple(config.albedo), "ambient": config.ambient,
                  "diffuse": config.diffuse, "occlusion_tolerance": config.occlusion_tolerance}
        values.update(overrides)
        return cls(**values)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Return (V, 3) unit area-weighted vertex normals of vertices (V, 3) and faces (F, 3) int64
    (counter-clockwise faces give outward normals); differentiable with respect to vertices by
    autograd (the renderer's backward uses `_Normals.backward` instead)."""
    return _Normals.compute(vertices, faces).normals


@dataclass
class _Normals:
    """Vertex normals with what their backward needs: unit normals (V, 3), 1 / |sum of face
    normals| (V, 1) and the face edges e1 = v1 - v0, e2 = v2 - v0 (F, 3)."""

    normals: torch.Tensor
    inv_len: torch.Tensor
    e1: torch.Tensor
    e2: torch.Tensor
    columns: torch.Tensor  # (3, F) contiguous vertex indices of the faces' corners

    @classmethod
    def compute(cls, vertices: torch.Tensor, faces: torch.Tensor) -> "_Normals":
        columns = faces.t().contiguous()
        v0, v1, v2 = (vertices.index_select(0, columns[k]) for k in range(3))
        e1, e2 = v1 - v0, v2 - v0
        face_n = torch.linalg.cross(e1, e2)
        acc = torch.zeros_like(vertices)
        for k in range(3):
            acc.index_add_(0, columns[k], face_n)
        inv_len = 1.0 / acc.norm(dim=-1, keepdim=True).clamp_min(1e-20)
        return cls(acc * inv_len, inv_len, e1, e2, columns)

    def backward(self, grad_normals: torch.Tensor) -> torch.Tensor:
        """Return dL/dV (V, 3) from dL/d(unit vertex normals) (V, 3) (same as autograd through
        `vertex_normals`): through the normalisation, the face sums and n_f = e1 x e2."""
        n, columns, e1, e2 = self.normals, self.columns, self.e1, self.e2
        d_acc = (grad_normals - (grad_normals * n).sum(-1, keepdim=True) * n) * self.inv_len
        # Only faces with a vertex whose normal gets a gradient (e.g. the visible ones) count.
        touched = (d_acc != 0).any(-1)
        active = touched[columns[0]] | touched[columns[1]] | touched[columns[2]]
        if not bool(active.all()):
            keep = active.nonzero().squeeze(1)
            columns = columns.index_select(1, keep)
            e1, e2 = e1.index_select(0, keep), e2.index_select(0, keep)
        g = d_acc.index_select(0, columns[0])
        g += d_acc.index_select(0, columns[1])
        g += d_acc.index_select(0, columns[2])  # (F', 3)
        d1 = torch.linalg.cross(e2, g)  # d(e1 x e2 . g)/de1
        d2 = torch.linalg.cross(g, e1)  # d(e1 x e2 . g)/de2
        out = torch.zeros_like(grad_normals)
        out.index_add_(0, columns[1], d1)
        out.index_add_(0, columns[2], d2)
        out.index_add_(0, columns[0], d1.add_(d2).neg_())
        return out


@dataclass
class _Shading:
    """What the backward of the shading needs, per covered pixel (M of them, flat indices
    `pixels`): the (3, M) face corners, barycentrics (M, 3), and dcolor_c/dn = a_c k (rgb:
    a = albedo, k (M, 3) = diffuse [cos > 0] (I - n_hat n_hat^T) light * sign / |n|) or
    dcolor_c/dn = 0.5 (I - n_hat n_hat^T)_c * sign / |n| (normals: k (M, 3, 3)), for n the
    interpolated normal; `unclamped` (M, C) flags, None when no channel is clamped."""

    pixels: torch.Tensor
    corners: torch.Tensor  # (3, M) contiguous vertex indices, corner k of each pixel's face
    bary: torch.Tensor
    k: torch.Tensor
    unclamped: torch.Tensor | None


def _surface_normals(gbuffer: GBuffer, normals: torch.Tensor, faces: torch.Tensor,
                     dtype: torch.dtype, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor]:
    """Return, per covered pixel (M of them): flat pixel indices (M,), face corners (3, M),
    barycentrics (M, 3), the interpolated unit normal turned to face the camera n_hat (M, 3)
    and sign / |n| (M, 1), n the interpolated (unnormalised) normal."""
    mask = gbuffer.mask.to(device)
    idx = mask.reshape(-1).nonzero().squeeze(1)
    face = gbuffer.face_id.to(device).reshape(-1).index_select(0, idx) - 1
    bary = gbuffer.bary.reshape(-1, 3).to(device).index_select(0, idx).to(dtype)
    point = gbuffer.point.reshape(-1, 3).to(device).index_select(0, idx).to(dtype)
    corners = faces.index_select(0, face).t().contiguous()  # (3, M)
    n = normals.index_select(0, corners[0]) * bary[:, 0:1]
    n += normals.index_select(0, corners[1]) * bary[:, 1:2]
    n += normals.index_select(0, corners[2]) * bary[:, 2:3]
    inv_len = 1.0 / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    # Face the camera: a visible surface's normal points against the viewing ray.
    sign = torch.where((n * point).sum(-1, keepdim=True) > 0, -1.0, 1.0).to(dtype)
    n_hat = n * (sign * inv_len)
    scale = sign * inv_len
    return idx, corners, bary, n_hat, scale


def _colour_image(gbuffer: GBuffer, surface: tuple, raw: torch.Tensor, k: torch.Tensor,
                  settings: DiffRenderSettings) -> tuple[torch.Tensor, _Shading]:
    """Return the (3, H, W) image with the colours `raw` (M, 3) (clamped to [0, 1]) on the
    covered pixels of `surface` (`_surface_normals`) and the background elsewhere, and its
    shading cache (dcolor/dn factor `k`)."""
    h, w = gbuffer.height, gbuffer.width
    idx, corners, bary = surface[:3]
    color = raw.clamp(0.0, 1.0)
    background = torch.tensor(settings.background, dtype=raw.dtype, device=raw.device)
    flat = background.expand(h * w, 3).contiguous().index_copy_(0, idx, color)
    unclamped = (raw > 0) & (raw < 1)
    cache = _Shading(idx, corners, bary, k, None if bool(unclamped.all()) else unclamped)
    return flat.reshape(h, w, 3).permute(2, 0, 1), cache


def _shade_mask(gbuffer: GBuffer, normals: torch.Tensor | None, faces: torch.Tensor,
                settings: DiffRenderSettings, dtype: torch.dtype,
                device: torch.device) -> tuple[torch.Tensor, None]:
    """Return the (1, H, W) coverage image (1 on the object, 0 elsewhere) and no cache."""
    return gbuffer.mask.to(device).to(dtype)[None], None


def _shade_rgb(gbuffer: GBuffer, normals: torch.Tensor, faces: torch.Tensor,
               settings: DiffRenderSettings, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, _Shading]:
    """Return the (3, H, W) Lambert + ambient image and its cache: colour = albedo * (ambient +
    diffuse * max(0, n_hat . l)), dcolor_c/dn = albedo_c * k (see `_Shading`)."""
    surface = _surface_normals(gbuffer, normals, faces, dtype, device)
    n_hat, scale = surface[3], surface[4]
    light = -torch.tensor(settings.light_direction, dtype=dtype, device=device)
    light = light / light.norm()
    cos = (n_hat @ light)[:, None]
    albedo = torch.tensor(settings.albedo, dtype=dtype, device=device)
    raw = albedo * (settings.ambient + settings.diffuse * cos.clamp_min(0.0))
    k = (light - cos * n_hat) * (scale * settings.diffuse * (cos > 0).to(dtype))
    return _colour_image(gbuffer, surface, raw, k, settings)


def _shade_normals(gbuffer: GBuffer, normals: torch.Tensor, faces: torch.Tensor,
                   settings: DiffRenderSettings, dtype: torch.dtype,
                   device: torch.device) -> tuple[torch.Tensor, _Shading]:
    """Return the (3, H, W) normal map (n_hat + 1) / 2 and its cache (k (M, 3, 3), see
    `_Shading`)."""
    surface = _surface_normals(gbuffer, normals, faces, dtype, device)
    n_hat, scale = surface[3], surface[4]
    raw = 0.5 * (n_hat + 1.0)
    eye = torch.eye(3, dtype=dtype, device=device)
    k = 0.5 * (eye - n_hat[:, :, None] * n_hat[:, None, :]) * scale[..., None]
    return _colour_image(gbuffer, surface, raw, k, settings)


def _shade(gbuffer: GBuffer, normals: torch.Tensor | None, faces: torch.Tensor,
           settings: DiffRenderSettings, dtype: torch.dtype,
           device: torch.device) -> tuple[torch.Tensor, _Shading | None]:
    """Return the (C, H, W) image of `settings.image_type` and the shading cache (None for
    masks). normals: (V, 3) unit vertex normals (not needed for masks)."""
    shader = _IMAGE_TYPE_SHADERS[settings.image_type][0]
    if shader is _shade_mask:
        return _shade_mask(gbuffer, normals, faces, settings, dtype, device)
    assert normals is not None  # the callers compute the normals for every shaded image type
    return shader(gbuffer, normals, faces, settings, dtype, device)


def _rgb_rows(g: torch.Tensor, cache: _Shading, settings: DiffRenderSettings) -> torch.Tensor:
    """dL/dn (M, 3) of the rgb image from dL/dcolour (M, 3): (g . albedo) k."""
    albedo = torch.tensor(settings.albedo, dtype=g.dtype, device=g.device)
    return (g @ albedo)[:, None] * cache.k


def _normals_rows(g: torch.Tensor, cache: _Shading,
                  settings: DiffRenderSettings) -> torch.Tensor:
    """dL/dn (M, 3) of the normal map from dL/dcolour (M, 3): sum_c g_c dcolour_c/dn."""
    return (g[:, :, None] * cache.k).sum(1)  # k symmetric


def _shading_rows(grad_image: torch.Tensor, cache: _Shading,
                  settings: DiffRenderSettings) -> torch.Tensor:
    """Return dL/dn (M, 3) per covered pixel for the interpolated normal n at a fixed surface
    point (term 1), from dL/dI (C, H, W); see `_Shading`. Scattered with the barycentrics to
    the vertex normals, then `_Normals.backward` takes it to the vertices."""
    c = grad_image.shape[0]
    g = grad_image.reshape(c, -1).index_select(1, cache.pixels).t()  # (M, C)
    if cache.unclamped is not None:
        g = g * cache.unclamped
    rows = _IMAGE_TYPE_SHADERS[settings.image_type][1]
    assert rows is not None  # only the shaded image types (not masks) have a cache
    return rows(g, cache, settings)


# Per image type: (forward shading, backward dL/dn rows; None: no shading term).
_IMAGE_TYPE_SHADERS = {"rgb": (_shade_rgb, _rgb_rows), "normals": (_shade_normals, _normals_rows),
                       "mask": (_shade_mask, None)}


def _crop_box(mask: torch.Tensor, margin: int) -> tuple[slice, slice]:
    """Rows and columns of the bounding box of `mask` (H, W) grown by `margin` (clipped)."""
    h, w = mask.shape
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    if rows.numel() == 0:
        return slice(0, 0), slice(0, 0)
    r0, r1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin + 1, h)
    c0, c1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + margin + 1, w)
    return slice(r0, r1), slice(c0, c1)


def _neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) != 0 in the (2r+1)^2 window, nearest first (Euclidean)."""
    offs = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if (dy, dx) != (0, 0)]
    return sorted(offs, key=lambda o: (o[0] ** 2 + o[1] ** 2, o))


def _occluded(pix: torch.Tensor, gb: dict, rays: torch.Tensor, face_normals: torch.Tensor,
              tolerance: float, h: int, w: int) -> torch.Tensor:
    """Return (M,) bool: covered pixels `pix` (flat indices; `face_normals` (M, 3) of the faces
    seen there) next to a closer, different surface
    (an 8-neighbour with another face, closer than both the pixel's depth and the plane of the
    pixel's face along the neighbour's ray, by more than `tolerance` x depth)."""
    y, x = pix // w, pix % w
    z = gb["depth"][pix]
    face = gb["face"][pix]
    n = face_normals
    n_dot_p = (n * gb["point"][pix]).sum(-1)
    occluded = torch.zeros_like(pix, dtype=torch.bool)
    for dy, dx in _neighbour_offsets(1):
        qy, qx = y + dy, x + dx
        inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
        q = qy.clamp(0, h - 1) * w + qx.clamp(0, w - 1)
        zq = gb["depth"][q]
        other = inside & (gb["face"][q] > 0) & (gb["face"][q] != face)
        closer = zq < z * (1.0 - tolerance)
        denom = (n * rays[q]).sum(-1)
        z_plane = n_dot_p / torch.where(denom.abs() > 1e-20, denom, torch.ones_like(denom))
        valid = (denom.abs() > 1e-20) & (z_plane > 0)
        in_front_of_plane = valid & (zq < z_plane - tolerance * z)
        occluded |= other & closer & in_front_of_plane
    return occluded


def field_to_vertex_gradients(field: torch.Tensor, gbuffer: GBuffer, vertices: torch.Tensor,
                              camera: CameraIntrinsics, faces: torch.Tensor, dilation: int = 2,
                              occlusion_tolerance: float = 0.01) -> torch.Tensor:
    """The propagation half of the backward: return dL/dV (V, 3) (dtype and device of
    `vertices`) from any per-pixel field F = dL/d(u, v) (H, W, 2) (loss units per pixel, u
    right, v down; from any `FieldProducer`, e.g. `image_gradient_field`, or a learned one).

    vertices (V, 3): the camera-frame (OpenCV, metres) vertices that were rasterised into
    `gbuffer`; faces (F, 3) int64. For every pixel p with F_p != 0: its surface point X_p
    (covered pixels: their own; uncovered pixels within `dilation` pixels (Chebyshev) of the
    object: the nearest covered pixel's), the Jacobian J (2 x 3) of (u, v) = (fx X/Z + cx,
    fy Y/Z + cy) at X_p, and vertex k of the face seen there gets b_k(p) J^T F_p (scatter-add).
    Pixels next to a closer, different surface (relative depth step > `occlusion_tolerance`)
    contribute nothing. Zero gradient when the object covers no pixel.
    """
    h, w = gbuffer.height, gbuffer.width
    if field.shape != (h, w, 2):
        raise RenderError(f"field must be (H, W, 2) = ({h}, {w}, 2), got {tuple(field.shape)}")
    grad, _ = _vertex_gradients(field, gbuffer, vertices, camera, faces, dilation,
                                occlusion_tolerance)
    return grad.to(vertices.dtype)


def _covered(gb: dict, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the covered pixels (M,) (flat indices), their face corners (3, M) and
    barycentrics (M, 3)."""
    pixels = gb["face"].nonzero().squeeze(1)  # face id 0 = background
    corners = faces.index_select(0, gb["face"].index_select(0, pixels) - 1).t().contiguous()
    return pixels, corners, gb["bary"].index_select(0, pixels)


def _jacobian_t(fuv: torch.Tensor, point: torch.Tensor, camera: CameraIntrinsics,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Return J^T F (M, 3) (into `out` if given) for fields F (M, 2) at camera-frame points
    X (M, 3), J the 2 x 3 Jacobian of (u, v) = (fx X/Z + cx, fy Y/Z + cy)."""
    out = torch.empty_like(point) if out is None else out
    inv_z = 1.0 / point[:, 2].clamp_min(1e-12)
    torch.mul(fuv[:, 0], inv_z, out=out[:, 0]).mul_(camera.fx)
    torch.mul(fuv[:, 1], inv_z, out=out[:, 1]).mul_(camera.fy)
    torch.addcmul(out[:, 0] * point[:, 0], out[:, 1], point[:, 1], out=out[:, 2])
    out[:, 2].mul_(inv_z).neg_()
    return out


def _vertex_gradients(field: torch.Tensor, gbuffer: GBuffer, vertices: torch.Tensor,
                      camera: CameraIntrinsics, faces: torch.Tensor, dilation: int,
                      occlusion_tolerance: float, covered=None,
                      normal_rows: torch.Tensor | None = None,
                      region: tuple[slice, slice] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The propagation of `field_to_vertex_gradients` (float32), fused with the scatter of the
    shading term (one scatter for both, as the backward of `diff_render` uses it):
    covered = (pixels, corners, bary) of all covered pixels (computed if None) and
    normal_rows (M, 3) dL/dn per covered pixel; region: (rows, cols) outside which the field
    is known to be zero. Returns (dL/dV (V, 3), dL/d(vertex normals) (V, 3) or None)."""
    dev, h, w = field.device, gbuffer.height, gbuffer.width
    faces = faces.to(dev)
    gb = {"face": gbuffer.face_id.to(dev).reshape(-1), "mask": gbuffer.mask.to(dev),
          "depth": gbuffer.depth.to(dev).reshape(-1),
          "point": gbuffer.point.to(dev).reshape(-1, 3),
          "bary": gbuffer.bary.to(dev).reshape(-1, 3)}
    n_cols = 3 if normal_rows is None else 6
    acc = torch.zeros(vertices.shape[0], n_cols, dtype=torch.float32, device=dev)
    mask2d = gbuffer.mask.to(dev)
    mask = mask2d.reshape(-1)
    if not bool(mask.any()):
        return acc[:, :3], None if normal_rows is None else acc[:, 3:]
    pixels, corners, bary = _covered(gb, faces) if covered is None else covered
    bary = bary.to(torch.float32)
    f = field.to(torch.float32).reshape(-1, 2)
    f_in = f.index_select(0, pixels)  # (M, 2)
    if occlusion_tolerance < 1.0:
        occ = _occlusion_edges(pixels, f_in, gb, vertices, camera, faces, occlusion_tolerance,
                               h, w)
        if occ is not None:
            f_in = f_in * (~occ)[:, None]
    grad_rows = torch.empty(pixels.shape[0], n_cols, dtype=torch.float32, device=dev)
    _jacobian_t(f_in, gb["point"].index_select(0, pixels), camera, out=grad_rows[:, :3])
    if normal_rows is not None:
        grad_rows[:, 3:] = normal_rows
    for k in range(3):
        acc.index_add_(0, corners[k], grad_rows * bary[:, k:k + 1])
    # Silhouette band: uncovered pixels take the surface point of the nearest covered pixel.
    rows, cols = (slice(0, h), slice(0, w)) if region is None else region
    band = (field[rows, cols] != 0).any(-1) & ~mask2d[rows, cols]
    outer = band.nonzero()
    outer = (outer[:, 0] + rows.start) * w + outer[:, 1] + cols.start
    if outer.numel() and dilation > 0:
        src = torch.full_like(outer, -1)
        y, x = outer // w, outer % w
        for dy, dx in _neighbour_offsets(dilation):
            todo = src < 0
            if not bool(todo.any()):
                break
            qy, qx = y + dy, x + dx
            inside = (qy >= 0) & (qy < h) & (qx >= 0) & (qx < w)
            q = qy.clamp(0, h - 1) * w + qx.clamp(0, w - 1)
            src = torch.where(todo & inside & mask[q], q, src)
        keep = src >= 0
        outer, src = outer[keep], src[keep]
        g3 = _jacobian_t(f.index_select(0, outer), gb["point"].index_select(0, src), camera)
        tri = faces.index_select(0, gb["face"].index_select(0, src) - 1)  # (K, 3)
        contrib = gb["bary"].index_select(0, src)[..., None] * g3[:, None, :]  # (K, 3, 3)
        acc[:, :3].index_add_(0, tri.reshape(-1), contrib.reshape(-1, 3))
    return acc[:, :3], None if normal_rows is None else acc[:, 3:]


def _occlusion_edges(pixels: torch.Tensor, f_in: torch.Tensor, gb: dict, vertices: torch.Tensor,
                     camera: CameraIntrinsics, faces: torch.Tensor, tolerance: float, h: int,
                     w: int) -> torch.Tensor | None:
    """Return (M,) bool over the covered `pixels`: next to a closer, different surface (see
    `_occluded`), or None when no pixel with a non-zero field can be."""
    # Cheap prefilter: only pixels with a neighbour closer by the tolerance can be occluded.
    rows, cols = _crop_box(gb["mask"], 1)
    depth = gb["depth"].reshape(h, w)[rows, cols]
    depth = torch.where(depth > 0, depth, torch.full_like(depth, float("inf")))
    depth = TF.pad(depth[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    nearest = torch.minimum(torch.minimum(depth[:-2], depth[1:-1]), depth[2:])
    nearest = torch.minimum(torch.minimum(nearest[:, :-2], nearest[:, 1:-1]), nearest[:, 2:])
    y, x = pixels // w - rows.start, pixels % w - cols.start
    nearest = nearest.reshape(-1).index_select(0, y * (cols.stop - cols.start) + x)
    cand = (nearest < gb["depth"].index_select(0, pixels) * (1.0 - tolerance)) \
        & (f_in != 0).any(-1)
    if not bool(cand.any()):
        return None
    pix = pixels[cand]
    rays = pixel_rays(camera, device=pixels.device).reshape(-1, 3)
    tri = vertices.detach().to(device=pixels.device, dtype=torch.float32)[
        faces.index_select(0, gb["face"].index_select(0, pix) - 1)]  # (K, 3, 3)
    face_n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    occ = torch.zeros_like(cand)
    occ[cand] = _occluded(pix, gb, rays, face_n, tolerance, h, w)
    return occ


def _checked_field(field, gbuffer: GBuffer) -> torch.Tensor:
    """Return a producer's field; RenderError unless it is a floating (H, W, 2) tensor."""
    shape = (gbuffer.height, gbuffer.width, 2)
    if not isinstance(field, torch.Tensor) or field.shape != shape \
            or not field.is_floating_point():
        got = f"{tuple(field.shape)} {field.dtype}" if isinstance(field, torch.Tensor) \
            else type(field).__name__
        raise RenderError(f"the field producer must return a float tensor {shape}, got {got}")
    return field


class _DiffRenderFunction(torch.autograd.Function):
    """Forward: rasterise (OpenGL) and shade every view; backward: the screen-space term (2)
    plus the shading-normal term (1) to the vertices. Inputs after `vertices` get no gradient."""

    @staticmethod
    def forward(ctx, vertices: torch.Tensor, faces: torch.Tensor,
                cameras: list[CameraIntrinsics], settings: DiffRenderSettings,
                shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        dev, dtype = vertices.device, vertices.dtype
        faces_np = faces.cpu().numpy()
        cpu = vertices.detach().to("cpu", torch.float32)
        images, masks, gbuffers, caches, normals, view_normals = [], [], [], [], None, []
        for b, camera in enumerate(cameras):
            gb = rasterize(cpu[b], faces_np, camera, settings.znear, settings.zfar)
            if not bool(gb.mask.any()):
                warnings.warn(f"view {b}: the object covers no pixel (outside the view or "
                              f"behind the camera); its image is background and its gradient "
                              f"zero", RuntimeWarning, stacklevel=4)
            if settings.image_type != "mask" and (normals is None or not shared):
                normals = _Normals.compute(vertices[b].detach(), faces)
            view_normals.append(normals)
            image, cache = _shade(gb, None if normals is None else normals.normals, faces,
                                  settings, dtype, dev)
            images.append(image)
            masks.append(gb.mask)
            gbuffers.append(gb)
            caches.append(cache)
        image = torch.stack(images)
        ctx.save_for_backward(vertices, faces, image)
        ctx.gbuffers, ctx.caches, ctx.cameras, ctx.settings = gbuffers, caches, cameras, settings
        ctx.normals = view_normals  # None entries for masks
        mask = torch.stack(masks).to(dev)
        ctx.mark_non_differentiable(mask)
        return image, mask

    @staticmethod
    def backward(ctx, grad_image: torch.Tensor, _grad_mask):
        vertices, faces, image = ctx.saved_tensors
        settings = ctx.settings
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        margin = settings.dilation + 2  # the Sobel support and the silhouette band
        grads = []
        for b, gb in enumerate(ctx.gbuffers):
            rows, cols = _crop_box(gb.mask.to(image.device), margin)
            if rows.stop <= rows.start:  # nothing covered: zero gradient
                grads.append(torch.zeros_like(vertices[b]))
                continue
            context = FieldContext(gb, ctx.cameras[b], vertices[b].detach(), faces, settings,
                                   (rows, cols), b)
            field = _checked_field(settings.field_producer(grad_image[b], image[b], context),
                                   gb)
            cache = ctx.caches[b]
            covered = None if cache is None else (cache.pixels, cache.corners, cache.bary)
            normal_rows = None if cache is None else _shading_rows(grad_image[b], cache,
                                                                   settings)
            grad_b, grad_normals = _vertex_gradients(
                field, gb, vertices[b], ctx.cameras[b], faces, settings.dilation,
                settings.occlusion_tolerance, covered, normal_rows, (rows, cols))
            if grad_normals is not None:
                grad_b = grad_b + ctx.normals[b].backward(grad_normals.to(vertices.dtype))
            grads.append(grad_b.to(vertices.dtype))
        return torch.stack(grads), None, None, None, None


def diff_render(vertices: torch.Tensor, faces, cameras: CameraIntrinsics | list[CameraIntrinsics],
                settings: DiffRenderSettings = DiffRenderSettings()
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render camera-frame vertices differentiably; return (image, mask).

    vertices: (V, 3) or (B, V, 3) float torch tensor, OpenCV camera frame (x right, y down,
    z forward), metres, on any device (copied to CPU for OpenGL; results come back to its
    device). faces: (F, 3) integer indices (numpy or torch). cameras: one `CameraIntrinsics` or
    a list of B (all the same image size); (V, 3) vertices with a list of cameras are seen by
    every camera, (B, V, 3) with one camera are B views through it.
    Returns image (C, H, W) or (B, C, H, W) float in [0, 1] (C = 3, or 1 for "mask") and mask
    (H, W) or (B, H, W) bool, batched when vertices are (B, V, 3) or cameras a list. Gradients
    of any loss of the image reach `vertices` (true gradients, see the module docstring).
    RenderError on malformed input; a view in which the object covers no pixel gives a
    RuntimeWarning and zero gradient.
    """
    if not isinstance(vertices, torch.Tensor):
        raise RenderError("vertices must be a torch tensor (V, 3) or (B, V, 3)")
    if not vertices.is_floating_point():
        raise RenderError(f"vertices must be floating point, got {vertices.dtype}")
    batched = vertices.dim() == 3 or isinstance(cameras, (list, tuple))
    if vertices.dim() not in (2, 3) or vertices.shape[-1] != 3:
        raise RenderError(f"vertices must be (V, 3) or (B, V, 3), got {tuple(vertices.shape)}")
    cams = list(cameras) if isinstance(cameras, (list, tuple)) else [cameras]
    verts = vertices if vertices.dim() == 3 else vertices[None]
    n_views = max(verts.shape[0], len(cams))
    if len(cams) == 1:
        cams = cams * n_views
    if verts.shape[0] == 1:
        verts = verts.expand(n_views, -1, -1)
    if len(cams) != n_views or verts.shape[0] != n_views:
        raise RenderError(f"{verts.shape[0]} vertex sets and {len(cams)} cameras do not match")
    if n_views == 0:
        raise RenderError("no views to render")
    if any((c.width, c.height) != (cams[0].width, cams[0].height) for c in cams):
        raise RenderError("all cameras of one call must have the same image size")
    faces_np = faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else faces
    faces_np = np.asarray(faces_np)
    if faces_np.ndim != 2 or faces_np.shape[-1] != 3 or not np.issubdtype(faces_np.dtype,
                                                                           np.integer):
        raise RenderError(f"faces must be (F, 3) integer indices, got {faces_np.shape} "
                          f"{faces_np.dtype}")
    faces_t = torch.tensor(faces_np, dtype=torch.int64, device=vertices.device)
    image, mask = _DiffRenderFunction.apply(verts, faces_t, cams, settings,
                                            vertices.dim() == 2)
    if not batched:
        image, mask = image[0], mask[0]
    return image, mask


def diff_render_supersampled(vertices: torch.Tensor, faces, camera: CameraIntrinsics,
                             settings: DiffRenderSettings = DiffRenderSettings(),
                             factor: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Anti-aliased `diff_render` through one camera: render at `factor` x the image size and
    average factor x factor blocks; return (image (C, H, W) or (B, C, H, W), mask (H, W) or
    (B, H, W) bool: at least half of the block covered), the sizes of `camera`. factor <= 1 is
    plain `diff_render`. Gradients reach `vertices` through the average."""
    if factor <= 1:
        return diff_render(vertices, faces, camera, settings)
    image, mask = diff_render(vertices, faces,
                              camera.scaled(camera.width * factor, camera.height * factor),
                              settings)
    if image.dim() == 3:
        image = TF.avg_pool2d(image[None], factor)[0]
        mask = TF.avg_pool2d(mask[None, None].float(), factor)[0, 0] >= 0.5
    else:
        image = TF.avg_pool2d(image, factor)
        mask = TF.avg_pool2d(mask[:, None].float(), factor)[:, 0] >= 0.5
    return image, mask
