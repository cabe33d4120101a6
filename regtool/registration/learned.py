"""The learned backward (Grabner et al., ECCV 2020): a correspondence field drives the pose.

`field_stage` refines the poses (and, if asked, the latent code) from a correspondence field:
per iteration and view, rasterise the current estimate (`gbuffer.rasterize`), ask the field
estimator where every rendered pixel's surface point lies in the observation (a `Field`:
displacement in pixels + weight), turn it into the per-pixel gradient of the reprojection energy
E = 1/2 sum_p w_p |d_p - delta_p|^2 / sum w (`correspondence.field.field_gradient`) and
propagate it to the vertices with `render.diff.field_to_vertex_gradients` (the same
propagation as the analytic backward: face ids, barycentrics, projection Jacobian), then by
autograd to the pose increment and the code. The step is Gauss-Newton (a weighted
least-squares pose step, as PnP would take): g from the propagation, the normal matrix
H = sum_p w_p A_p^T A_p / sum w from the Jacobians A_p (2 x n) of the projected surface points
with respect to the parameters (forward-mode autograd), step = -(H + mu diag(H) + eps)^-1 g,
clipped to `max_rotation_step` radians / `max_translation_step` object radii / 1 latent std.
It stops once the field's weighted mean length is below `stop_px` pixels and returns the
state whose field was the shortest (a network's field is noisy; the last step need not be the
best).

`register_learned` is the driver of `register --backward learned`: the field stage from the
initial poses, then the analytic known-pose descent of the code at the refined poses
(`optimise.register` with joint = False: image features drive the shape; with
`register.field_refine` the analytic joint descent of pose and code instead), its result
carrying the refined poses and the field stage's summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from regtool.config import RegisterConfig
from regtool.correspondence.field import Field, field_gradient, project
from regtool.errors import RegistrationError
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.registration.optimise import (
    POSE_AXES,
    Callback,
    Observation,
    RegistrationResult,
    _scales,
    apply_increment,
    posed_vertices,
    register,
)
from regtool.render.diff import field_to_vertex_gradients
from regtool.render.gbuffer import GBuffer, rasterize

# A field estimator: (view index, G-buffer of the current rendering, its camera-frame vertices
# (V, 3) float32 (detached), faces (F, 3) int64, camera) -> the `Field` at that rendering.
FieldEstimator = Callable[[int, GBuffer, torch.Tensor, torch.Tensor, CameraIntrinsics], Field]


@dataclass(frozen=True)
class FieldStageSettings:
    """Settings of `field_stage`: iterations (at most), stop_px (stop when the weighted mean
    field length is below this, pixels), drive_code (the field also moves the latent code),
    pose_axes (pose parameters moved, as RegisterConfig.pose_axes), damping mu, the step clips
    (radians, object radii) and latent_bound (|u_j| at most, latent std)."""

    iterations: int = 15
    stop_px: float = 1.0
    drive_code: bool = False
    pose_axes: tuple[str, ...] = ("rx", "ry", "rz", "tx", "ty")
    damping: float = 1e-3
    max_rotation_step: float = 0.25
    max_translation_step: float = 0.5
    latent_bound: float = 3.0
    code_prior: float = 0.0  # weight of |u - u_start|^2 relative to the normal matrix scale

    @classmethod
    def from_config(cls, config: RegisterConfig, **overrides) -> "FieldStageSettings":
        values: dict[str, Any] = {
            "iterations": config.field_iterations, "stop_px": config.field_stop_px,
            "drive_code": config.field_code, "pose_axes": tuple(config.pose_axes),
            "latent_bound": config.latent_bound}
        values.update(overrides)
        return cls(**values)


@dataclass
class FieldStageResult:
    """The outcome of `field_stage`: the poses (one per view) and latent code z (k,) of the
    iteration with the shortest field, the weighted mean field length per iteration (pixels,
    mean over views), why it stopped and its seconds."""

    poses: list[Pose]
    z: np.ndarray
    field_px: list[float] = field(default_factory=list)
    stop_reason: str = "iterations"
    seconds: float = 0.0

    def summary(self) -> dict:
        """Return the stage's entry of `RegistrationResult.descents`: "losses" are the field
        lengths (pixels) per iteration, as `pipeline.summary_line` counts evaluations."""
        return {"start": "field stage", "field_px": list(self.field_px),
                "losses": list(self.field_px), "pose_warmup": 0,
                "iterations": len(self.field_px), "stop_reason": self.stop_reason,
                "seconds": self.seconds}


def field_stage(space, observations: list[Observation], estimator: FieldEstimator,
                settings: FieldStageSettings, device: torch.device,
                z0: np.ndarray | None = None) -> FieldStageResult:
    """Refine the observations' poses (and the code with `settings.drive_code`) from the
    correspondence fields of `estimator` (module docstring); start at code `z0` (default the
    canonical's). Returns the `FieldStageResult`."""
    t_start = time.perf_counter()
    std, unit, radius = _scales(space, device)
    faces = torch.tensor(space.faces, dtype=torch.int64)
    poses = [o.pose for o in observations]
    z_start = np.array(space.canonical_code if z0 is None else z0, np.float64)
    u = torch.as_tensor(z_start, dtype=torch.float64, device=device) / std
    u_start = u.clone()
    k = space.latent_dim
    active = torch.tensor([float(a in settings.pose_axes) for a in POSE_AXES]
                          + [float(settings.drive_code)] * k, dtype=torch.float64)
    result = FieldStageResult(poses, (u * std).cpu().numpy())
    for _ in range(settings.iterations):
        delta = torch.zeros(6, dtype=torch.float64, device=device, requires_grad=True)
        uu = u.clone().requires_grad_(settings.drive_code)
        verts = space.deform(uu * std) * unit
        cams = posed_vertices(verts, poses, delta, radius)
        lengths, views = [], []
        for i, (cam, obs) in enumerate(zip(cams, observations)):
            cam32 = cam.detach().to("cpu", torch.float32)
            gb = rasterize(cam32, space.faces, obs.camera)
            fld = estimator(i, gb, cam32, faces, obs.camera)
            if float(fld.weight.sum()) <= 0:
                continue
            lengths.append(fld.mean_norm())
            grad_v = field_to_vertex_gradients(field_gradient(fld), gb, cam32, obs.camera,
                                               faces)
            cam.backward(grad_v.to(cam.dtype).to(cam.device), retain_graph=True)
            views.append((i, gb, fld))
        if not views:
            result.stop_reason = "no valid field"
            break
        result.field_px.append(float(np.mean(lengths)))
        if result.field_px[-1] <= min(result.field_px):  # the best state seen: keep it
            result.poses, result.z = poses, (u * std).detach().cpu().numpy()
        if result.field_px[-1] < settings.stop_px:
            result.stop_reason = "field below stop_px"
            break
        assert delta.grad is not None  # at least one view was propagated
        g = torch.cat([delta.grad, uu.grad if uu.grad is not None
                       else torch.zeros(k, dtype=torch.float64, device=device)]).cpu()
        h = _normal_matrix(space, observations, poses, u, std, unit, radius, views, device)
        step = _solve(h, g, active, settings, u - u_start)
        poses = apply_increment(poses, step[:6].numpy(), radius)
        if settings.drive_code:
            u = (u + step[6:].to(u.device)).clamp(-settings.latent_bound,
                                                   settings.latent_bound)
    result.seconds = time.perf_counter() - t_start
    return result


def _normal_matrix(space, observations, poses, u, std, unit, radius, views, device
                   ) -> torch.Tensor:
    """Return H (6 + k, 6 + k) = sum over views of sum_p w_p A_p^T A_p / sum w, A_p the
    Jacobian of pixel p's projected surface point (fixed face and barycentrics) with respect
    to (pose increment, whitened code)."""
    k = space.latent_dim
    h = torch.zeros(6 + k, 6 + k, dtype=torch.float64)
    for i, gb, fld in views:
        idx = gb.mask.reshape(-1).nonzero().squeeze(1)
        w = fld.weight.reshape(-1)[idx].to(torch.float64)
        keep = w > 0
        idx, w = idx[keep], w[keep]
        face = gb.face_id.reshape(-1)[idx] - 1
        bary = gb.bary.reshape(-1, 3)[idx].to(torch.float64).to(device)
        corners = torch.tensor(space.faces, dtype=torch.int64)[face].to(device)
        camera = observations[i].camera

        def pixels(params: torch.Tensor, i=i, corners=corners, bary=bary, camera=camera):
            verts = space.deform((u + params[6:]) * std) * unit
            cam = posed_vertices(verts, poses, params[:6], radius)[i]
            points = (cam[corners] * bary[..., None]).sum(1)
            return project(points, camera).reshape(-1)

        jac = torch.func.jacfwd(pixels)(torch.zeros(6 + k, dtype=torch.float64,
                                                    device=device)).cpu()  # (2M, n)
        jw = jac.reshape(-1, 2, 6 + k) * (w / w.sum()).cpu().sqrt()[:, None, None]
        jw = jw.reshape(-1, 6 + k)
        h += jw.T @ jw
    return h


def _solve(h: torch.Tensor, g: torch.Tensor, active: torch.Tensor,
           settings: FieldStageSettings, u_offset: torch.Tensor) -> torch.Tensor:
    """Return the damped Gauss-Newton step (6 + k,) over the active parameters (zero for the
    others), with a prior pulling the code towards its start, clipped to the step limits."""
    n = h.shape[0]
    on = active.nonzero().squeeze(1)
    step = torch.zeros(n, dtype=torch.float64)
    if on.numel() == 0:
        return step
    hh = h[on][:, on].clone()
    gg = g[on].clone()
    scale = float(torch.diagonal(hh).mean()) or 1.0
    code = on >= 6
    if bool(code.any()):
        prior = settings.code_prior * scale
        hh[code, code] += prior
        gg[code] += prior * u_offset.cpu()[on[code] - 6]
    hh += torch.diag(settings.damping * torch.diagonal(hh) + 1e-9 * scale)
    step[on] = -torch.linalg.solve(hh, gg)
    rot = float(step[:3].norm())
    if rot > settings.max_rotation_step:
        step[:3] *= settings.max_rotation_step / rot
    trans = float(step[3:6].norm())
    if trans > settings.max_translation_step:
        step[3:6] *= settings.max_translation_step / trans
    code_norm = float(step[6:].abs().max()) if n > 6 else 0.0
    if code_norm > 1.0:
        step[6:] /= code_norm
    return step


def register_learned(space, observations: list[Observation], loss_fn: Callable,
                     render_fn: Callable, config: RegisterConfig, device: torch.device,
                     estimator: FieldEstimator, callbacks: Sequence[Callback] = ()
                     ) -> RegistrationResult:
    """`register --backward learned`: the field stage from the observations' poses, then the
    analytic known-pose code descent (`optimise.register`, joint = False) at the refined
    poses (starting from the field stage's code when the field drove it). The result's
    timings gain "field" (seconds), its descents the field stage's summary first."""
    if not observations:
        raise RegistrationError("no observation given")
    stage = field_stage(space, observations, estimator, FieldStageSettings.from_config(config),
                        device)
    moved = [replace(o, pose=p) for o, p in zip(observations, stage.poses)]
    start = stage.z if config.field_code else None
    after = replace(config, joint=False) if not config.field_refine else \
        replace(config, joint=True, centre_start=False, pose_search_deg=0.0)
    result = register(space, moved, loss_fn, render_fn, after, device, callbacks=callbacks,
                      start_code=start)
    result.timings["field"] = stage.seconds
    result.timings["total"] += stage.seconds
    result.descents = [stage.summary(), *result.descents]
    return result
