"""The render-and-compare loop (StilllebenDR, Sec. 3.3): optimise the latent code (and in joint
mode a pose increment) so that the rendering of the deformed canonical matches the observation.

Parameters, all explicit:
* `u` (k,): the whitened latent code, z = u * sqrt(explained_variance), so one learning rate
  suits every component (a unit step is one standard deviation of the training set).
* `pose_delta` (6,): axis-angle (radians) and translation divided by the object radius (so the
  pose learning rate is in "object sizes"), an increment applied in the first view's camera
  frame about the object origin: X' = T0^-1(Exp(r) R0 X + t0 + t * radius); view i sees T_i X'.

Forward (`forward`, the one forward pass of every stage): ShapeSpace.deform(z) -> pose ->
render_fn (e.g. `diff_render_supersampled`) -> loss (FeatureLoss against the observed image,
restricted to the dilated object region), for a `Problem` (shape space, observations, loss,
renderer, scales). Stages, each calling `forward`: `_centre_shift` (silhouette centring),
`_rotation_search` (rotation grid; both in `_initial_increment`), `_descend` (one gradient
descent), `_code_search`; `register` is the driver that composes them.

The loss has no natural scale, so each parameter group's gradients are multiplied by the inverse
norm of its first gradient, or by their own inverse norm where that is smaller: a learning rate
is then the length of the first step and a bound on every later gradient step (in standard
deviations for the shape, radians / object radii for the pose). SGD with momentum and
exponential LR decay; in joint mode the x/y translation first moves the bounding box of the
rendered silhouette onto that of the object region (`centre_start`), the rotation starts from
the best of a coarse grid of +/-`pose_search_deg` about each allowed axis, then `pose_warmup`
pose-only iterations align the canonical (a shape optimised against a misaligned pose absorbs
the misalignment) and the shape updates start from the best pose of the warm-up; after it the
pose is updated once every `pose_every` shape updates; the whitened code stays within
+/-`latent_bound` standard deviations. Stop at `iterations`, on a plateau, or on divergence (NaN
or loss > `divergence_factor` x the first), keeping the best state seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from regtool.config import RegisterConfig
from regtool.errors import RegistrationError
from regtool.geometry.camera import CameraIntrinsics, Pose, axis_angle_to_matrix

POSE_AXES = ("rx", "ry", "rz", "tx", "ty", "tz")


@dataclass(frozen=True)
class Observation:
    """One observed view: `image` (H, W, 3) float32 RGB in [0, 1], its camera, the initial
    object -> camera pose, the object region (H, W) bool where the loss is evaluated (None: the
    whole image) and the undilated object mask it was grown from."""

    image: np.ndarray
    camera: CameraIntrinsics
    pose: Pose
    region: np.ndarray | None = None
    mask: np.ndarray | None = None  # the object mask before dilation (for display)


@dataclass
class IterationRecord:
    iteration: int
    loss: float
    lr: float
    pose_step: bool
    seconds: float


@dataclass(frozen=True)
class IterationEvent:
    """What a callback of `register` gets after every loss evaluation: the index of the descent
    (0, or 1 for `start = "search"`'s second), the iteration's record, the forward pass just made
    (the renderings of every view) and the observations it was compared with."""

    descent: int
    record: IterationRecord
    rendering: "Rendering"
    observations: list[Observation]


# A callback of `register`: progress bars, GIF frames (`figures.GifFrames`), logging.
Callback = Callable[[IterationEvent], None]


@dataclass
class RegistrationResult:
    """The outcome: best latent code `z` (k,), best poses (one per view), deformed vertices
    (M, 3) in the object frame (shape-space units), the per-iteration log, phase timings in
    seconds, why it stopped, and GIF frames (uint8 H x W x 3) of the kept descent when a caller
    recorded them (`pipeline.run_registration` with config.gif)."""

    z: np.ndarray
    poses: list[Pose]
    vertices: np.ndarray
    history: list[IterationRecord]
    best_iteration: int
    best_loss: float
    initial_loss: float
    stop_reason: str
    timings: dict[str, float]
    frames: list[np.ndarray] = field(default_factory=list)
    final_images: list[np.ndarray] = field(default_factory=list)
    final_masks: list[np.ndarray] = field(default_factory=list)
    # One summary per descent (start, losses, stop reason); `history` is the kept descent's.
    descents: list[dict] = field(default_factory=list)

    @property
    def kept_descent(self) -> int:
        """Return the index (0 or 1, as in the callbacks' events) of the descent this result
        comes from; other stages' summaries in `descents` (the learned backward's field stage)
        carry no index."""
        indexed = [d for d in self.descents if "descent" in d]
        kept = [d["descent"] for d in indexed if d.get("kept")]
        return kept[0] if kept else (indexed[0]["descent"] if indexed else 0)


def pose_increment_matrix(delta: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (R (3, 3), t (3,)) of the increment `delta` = (rotvec, translation / radius)."""
    return axis_angle_to_matrix(delta[:3]), delta[3:] * radius


def posed_vertices(vertices: torch.Tensor, poses: list[Pose], delta: torch.Tensor,
                   radius: float) -> list[torch.Tensor]:
    """Return the camera-frame vertices (V, 3) of every view after the pose increment."""
    dtype, device = vertices.dtype, vertices.device
    r0 = torch.as_tensor(poses[0].rotation, dtype=dtype, device=device)
    t0 = torch.as_tensor(poses[0].translation, dtype=dtype, device=device)
    dr, dt = pose_increment_matrix(delta.to(dtype), radius)
    cam0 = (vertices @ r0.T) @ dr.T + t0 + dt  # rotation about the object origin
    out = [cam0]
    if len(poses) > 1:
        obj = (cam0 - t0) @ r0  # back into the object frame
        for p in poses[1:]:
            r = torch.as_tensor(p.rotation, dtype=dtype, device=device)
            t = torch.as_tensor(p.translation, dtype=dtype, device=device)
            out.append(obj @ r.T + t)
    return out


def apply_increment(poses: list[Pose], delta: np.ndarray, radius: float) -> list[Pose]:
    """Return the poses of every view after the increment `delta` (6,)."""
    dr = axis_angle_to_matrix(torch.as_tensor(delta[:3], dtype=torch.float64)).numpy()
    dt = np.asarray(delta[3:], float) * radius
    r0, t0 = poses[0].rotation, poses[0].translation
    # New object -> camera-0 transform: x -> dr r0 x + t0 + dt (rotation about the object
    # origin, as Pose.compose: a rotation about the camera centre would also swing the object
    # across the image, coupling the rotation and translation updates).
    new0 = Pose(dr @ r0, t0 + dt)
    out = [new0]
    for p in poses[1:]:
        # object' -> object: x -> r0^T (new0(x) - t0); then the view's own transform.
        r_rel = r0.T @ new0.rotation
        t_rel = r0.T @ (new0.translation - t0)
        out.append(Pose(p.rotation @ r_rel, p.rotation @ t_rel + p.translation))
    return out


@dataclass(frozen=True)
class Problem:
    """What every stage renders and compares: the shape space, the observations, the loss
    `loss_fn(rendered (1, 3, H, W), view_index) -> scalar tensor`, the differentiable renderer
    `render_fn(vertices_cam (V, 3) float32, camera) -> (image (C, H, W), mask (H, W))`, and the
    scales of `_scales` (std (k,), unit: shape-space units -> metres, radius in metres)."""

    space: Any
    observations: list[Observation]
    loss_fn: Callable
    render_fn: Callable
    std: torch.Tensor
    unit: float
    radius: float

    @classmethod
    def create(cls, space, observations: list[Observation], loss_fn: Callable,
               render_fn: Callable, device: torch.device) -> "Problem":
        return cls(space, list(observations), loss_fn, render_fn, *_scales(space, device))

    def at_poses(self, poses: list[Pose]) -> "Problem":
        """Return the problem with the observations' initial poses replaced by `poses`."""
        return replace(self, observations=[replace(o, pose=p)
                                           for o, p in zip(self.observations, poses)])


@dataclass
class Rendering:
    """One forward pass: the deformed vertices (M, 3) (object frame, shape-space units), per
    view the rendered image (C, H, W) and mask (H, W), and the summed loss over the views
    (float64 scalar tensor; None when not asked for)."""

    vertices: torch.Tensor
    images: list[torch.Tensor]
    masks: list[torch.Tensor]
    loss: torch.Tensor | None

    def required_loss(self) -> torch.Tensor:
        """Return `loss` of a pass made with with_loss=True (the default)."""
        assert self.loss is not None, "forward was called with with_loss=False"
        return self.loss


@dataclass(frozen=True)
class _Best:
    """The best state of a descent so far: its loss, whitened code u (k,), pose increment (6,)
    and iteration (-1 before the first)."""

    loss: float
    u: torch.Tensor
    delta: torch.Tensor
    iteration: int


def forward(problem: Problem, code: torch.Tensor, delta: torch.Tensor,
            n_views: int | None = None, with_loss: bool = True,
            timings: dict[str, float] | None = None,
            residual: torch.Tensor | None = None) -> Rendering:
    """The forward pass of every stage: latent code z (k,) -> deformed vertices -> posed by the
    increment `delta` (6,) (see `posed_vertices`) from the observations' poses -> rendered ->
    loss against the observations. Gradients flow to `code` and `delta` unless called under
    torch.no_grad(). n_views: only the first n views (default all); with_loss: False renders
    only; timings: "render" and "features" seconds are added to it; residual: (M, 3)
    displacements added to the deformed vertices (shape-space units; `refine`)."""
    observations = problem.observations[:n_views]
    vertices = problem.space.deform(code)
    if residual is not None:
        vertices = vertices + residual
    cams = posed_vertices(vertices * problem.unit, [o.pose for o in observations], delta,
                          problem.radius)
    images, masks = [], []
    total = torch.zeros((), dtype=torch.float64, device=code.device) if with_loss else None
    for i, (v_cam, obs) in enumerate(zip(cams, observations)):
        t0 = time.perf_counter()
        image, mask = problem.render_fn(v_cam.to(torch.float32), obs.camera)
        images.append(image)
        masks.append(mask)
        t1 = time.perf_counter()
        if with_loss:
            total = total + problem.loss_fn(image[None, :3], i).to(torch.float64)
        if timings is not None:
            timings["render"] += t1 - t0
            timings["features"] += time.perf_counter() - t1
    return Rendering(vertices, images, masks, total)


def register(space, observations: list[Observation], loss_fn: Callable,
             render_fn: Callable, config: RegisterConfig, device: torch.device,
             callbacks: Sequence[Callback] = (),
             start_code: np.ndarray | None = None) -> RegistrationResult:
    """Run the registration and return its result.

    `space`: a ShapeSpace; `loss_fn(rendered (1, 3, H, W), view_index) -> scalar tensor`
    compares a rendering with observation `view_index` (features prepared by the caller);
    `render_fn(vertices_cam (V, 3), camera) -> (image (C, H, W), mask (H, W))` is the
    differentiable renderer. `callbacks` get an `IterationEvent` after every loss evaluation
    of every descent. `start_code` (k,):
    the latent code to start from, overriding `config.start`.

    `config.start == "search"`: two descents, the first from the canonical's code; the second
    from the code with the lowest loss among the mean shape and the training instances' codes
    (one render each) at the first descent's final poses, starting at those poses. The result
    with the lower loss is returned (with the first descent's initial loss and the summed
    timings of both and of the search). The descent from the canonical alone can stop in a
    local minimum next to it although the observed shape lies far away.
    """
    if not observations:
        raise RegistrationError("no observation given")
    problem = Problem.create(space, observations, loss_fn, render_fn, device)
    search = start_code is None and config.start == "search"
    if start_code is not None:
        z0, start = np.asarray(start_code, np.float64), "given code"
    elif config.start == "mean":
        z0, start = np.zeros(space.latent_dim), "mean"
    else:
        z0, start = np.array(space.canonical_code, np.float64), "canonical"
    t0 = time.perf_counter()
    u0 = torch.tensor(z0, dtype=torch.float64, device=device) / problem.std
    delta0 = _initial_increment(problem, u0 * problem.std, config, device)
    first = _descend(problem, config, device, callbacks, u0, delta0, start,
                     time.perf_counter() - t0)
    if not search:
        return _refine(problem, first, config, device)
    t0 = time.perf_counter()
    moved = problem.at_poses(first.poses)
    best = _code_search(moved, config, device)
    search_s = time.perf_counter() - t0
    # The second descent starts at the first one's poses: in joint mode they are already
    # aligned, so neither the silhouette centring nor the rotation grid runs again.
    second = _descend(moved, config, device, callbacks,
                      torch.as_tensor(best, dtype=torch.float64, device=device) / problem.std,
                      torch.zeros(6, dtype=torch.float64, device=device), "best training code",
                      descent=1)
    return _refine(problem, _keep_better(first, second, search_s), config, device)


def _refine(problem: Problem, result: RegistrationResult, config: RegisterConfig,
            device: torch.device) -> RegistrationResult:
    """The last stage: `refine.refine` (a residual beyond the latent space, if configured)."""
    from regtool.registration.refine import refine

    return refine(problem, result, config, device)


def _axis_mask(config: RegisterConfig, device: torch.device) -> torch.Tensor:
    """Return (6,) float64: 1 for the pose parameters in `config.pose_axes`, else 0."""
    return torch.tensor([float(a in config.pose_axes) for a in POSE_AXES],
                        dtype=torch.float64, device=device)


def _initial_increment(problem: Problem, code: torch.Tensor, config: RegisterConfig,
                       device: torch.device) -> torch.Tensor:
    """Return the pose increment (6,) a joint descent starts from: the silhouette centring
    (`config.centre_start`) then the rotation grid (`config.pose_search_deg`); zero in
    known-pose mode."""
    delta = torch.zeros(6, dtype=torch.float64, device=device)
    axis_mask = _axis_mask(config, device)
    with torch.no_grad():
        if config.joint and config.centre_start:
            delta[3:5] = torch.as_tensor(_centre_shift(problem, code),
                                         dtype=delta.dtype, device=device) * axis_mask[3:5]
        if config.joint and config.pose_search_deg > 0:
            delta.copy_(_rotation_search(problem, code, delta, axis_mask,
                                         config.pose_search_deg))
    return delta


class _ScaledSGD:
    """SGD with momentum and exponential learning-rate decay on one parameter tensor, whose
    gradient is scaled by the inverse norm of its first gradient, or by its own inverse norm
    where that is smaller: the learning rate is then the length of the first step (standard
    deviations; radians and object radii) and no later (momentum-free) step is longer, even
    where the first gradient happened to be small (the loss of a rasterised image is rugged)."""

    def __init__(self, param: torch.Tensor, lr: float, momentum: float, decay: float) -> None:
        self.param = param
        self.optimiser = torch.optim.SGD([param], lr=lr, momentum=momentum)
        self.schedule = torch.optim.lr_scheduler.ExponentialLR(self.optimiser, gamma=decay)
        self.scale: float | None = None

    @property
    def lr(self) -> float:
        return float(self.optimiser.param_groups[0]["lr"])

    def zero_grad(self) -> None:
        self.optimiser.zero_grad(set_to_none=True)

    def step(self, mask: torch.Tensor | None = None) -> None:
        """One step along the (masked, scaled) gradient, then one learning-rate decay."""
        grad = self.param.grad
        assert grad is not None  # called after a backward pass that reached the parameter
        if mask is not None:
            grad.mul_(mask)
        if self.scale is None:
            self.scale = _inverse_norm(grad)
        grad.mul_(min(self.scale, _inverse_norm(grad)))
        self.optimiser.step()
        self.schedule.step()

    def forget_momentum(self) -> None:
        self.optimiser.state.clear()


def _descend(problem: Problem, config: RegisterConfig, device: torch.device,
             callbacks: Sequence[Callback], u0: torch.Tensor, delta0: torch.Tensor, start: str,
             seconds_before: float = 0.0, descent: int = 0) -> RegistrationResult:
    """One gradient descent (see the module docstring) from the whitened code `u0` (k,) and the
    pose increment `delta0` (6,) (updated in joint mode only); `start` names the start in the
    descent's summary, `seconds_before` is added to its total time, `descent` is the index the
    callbacks' events carry."""
    timings = {"render": 0.0, "features": 0.0, "backward": 0.0, "optimiser": 0.0, "total": 0.0}
    t_start = time.perf_counter() - seconds_before
    u = u0.clone().requires_grad_(True)
    delta = delta0.clone().requires_grad_(config.joint)
    axis_mask = _axis_mask(config, device)
    shape = _ScaledSGD(u, config.learning_rate, config.momentum, config.lr_decay)
    pose = (_ScaledSGD(delta, config.pose_learning_rate, config.momentum, config.lr_decay)
            if config.joint else None)
    history: list[IterationRecord] = []
    best = _Best(loss=float("inf"), u=u.detach().clone(), delta=torch.zeros_like(delta0),
                 iteration=-1)
    initial_loss = float("nan")
    stop_reason = "iterations"
    since_best = 0
    warmup = config.pose_warmup if config.joint else 0
    for it in range(warmup + config.iterations + 1):
        t_it = time.perf_counter()
        in_warmup = it < warmup
        if warmup > 0 and it == warmup and pose is not None:
            # The shape updates start from the best pose of the warm-up, not from wherever the
            # pose momentum carried it last (the pose loss is rugged; SGD overshoots).
            with torch.no_grad():
                delta.copy_(best.delta)
            pose.forget_momentum()
        pose_step = config.joint and (in_warmup or
                                      (it - warmup) % config.pose_every == config.pose_every - 1)
        shape.zero_grad()
        if pose is not None:
            pose.zero_grad()
        rendering = forward(problem, u * problem.std, delta, timings=timings)
        total = rendering.required_loss()
        loss = float(total.detach())
        if it == 0:
            initial_loss = loss
        record = IterationRecord(it, loss, shape.lr, pose_step, time.perf_counter() - t_it)
        for callback in callbacks:  # before the divergence check: a GIF shows the last step
            callback(IterationEvent(descent, record, rendering, problem.observations))
        if not np.isfinite(loss) or (np.isfinite(initial_loss) and initial_loss > 0
                                     and loss > config.divergence_factor * initial_loss):
            stop_reason = "diverged"
            break
        if loss < best.loss * (1.0 - config.plateau_tolerance) or it == warmup:
            since_best = 0  # the plateau count starts again when shape updates start
        else:
            since_best += 1
        if loss < best.loss:
            best = _Best(loss=loss, u=u.detach().clone(), delta=delta.detach().clone(),
                         iteration=it)
        history.append(record)
        if it == warmup + config.iterations:
            break  # the last pass only evaluates the final state
        if since_best >= config.plateau_patience and not in_warmup:
            stop_reason = "plateau"
            break
        t0 = time.perf_counter()
        total.backward()
        timings["backward"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if u.grad is None or not torch.isfinite(u.grad).all():
            stop_reason = "diverged"
            break
        if not in_warmup:
            shape.step()
            with torch.no_grad():  # stay within the training distribution of shapes
                u.clamp_(-config.latent_bound, config.latent_bound)
        if pose is not None and pose_step and delta.grad is not None:
            pose.step(axis_mask)
        timings["optimiser"] += time.perf_counter() - t0
        record.seconds = time.perf_counter() - t_it
    summary = {"start": start, "descent": descent, "losses": [h.loss for h in history],
               "best_iteration": int(best.iteration), "best_loss": float(best.loss),
               "pose_warmup": warmup, "stop_reason": stop_reason}
    return _descent_result(problem, best, history, initial_loss, stop_reason, summary, timings,
                           t_start)


def _descent_result(problem: Problem, best: _Best, history: list[IterationRecord],
                    initial_loss: float, stop_reason: str, summary: dict,
                    timings: dict[str, float], t_start: float) -> RegistrationResult:
    """Return the result of a descent: its best state rendered once more (final images and
    masks), the final poses, and the total time since `t_start` (perf_counter seconds)."""
    with torch.no_grad():
        final = forward(problem, best.u * problem.std, best.delta, with_loss=False)
    poses = apply_increment([o.pose for o in problem.observations], best.delta.cpu().numpy(),
                            problem.radius)
    timings["total"] = time.perf_counter() - t_start
    return RegistrationResult(
        z=(best.u * problem.std).cpu().numpy(), poses=poses,
        vertices=final.vertices.cpu().numpy(), history=history,
        best_iteration=int(best.iteration), best_loss=float(best.loss),
        initial_loss=float(initial_loss), stop_reason=stop_reason, timings=timings,
        descents=[summary],
        final_images=[im.detach().cpu().permute(1, 2, 0)[..., :3].numpy()
                      for im in final.images],
        final_masks=[m.detach().cpu().numpy().astype(bool) for m in final.masks])


def _code_search(problem: Problem, config: RegisterConfig, device: torch.device) -> np.ndarray:
    """Return the latent code (k,) with the lowest loss, at the observations' poses, among the
    mean shape and the training instances' codes (clamped to +/-`config.latent_bound` standard
    deviations; one render each, no gradients)."""
    space, std = problem.space, problem.std
    zero = torch.zeros(6, dtype=torch.float64, device=device)
    candidates = [np.zeros(space.latent_dim), *np.array(space.train_codes)]
    whitened = [(torch.as_tensor(z, dtype=torch.float64, device=device) / std).clamp(
        -config.latent_bound, config.latent_bound) for z in candidates]
    with torch.no_grad():
        losses = [float(forward(problem, u * std, zero).required_loss()) for u in whitened]
    return (whitened[int(np.argmin(losses))] * std).cpu().numpy()


def _keep_better(first: RegistrationResult, second: RegistrationResult,
                 search_s: float) -> RegistrationResult:
    """Return the descent with the lower best loss, with the first one's initial loss, both
    descents' summaries and the summed timings (plus the code search's `search_s`)."""
    result = first if first.best_loss <= second.best_loss else second
    result.initial_loss = first.initial_loss
    result.descents = [{**d, "kept": r is result}
                       for r in (first, second) for d in r.descents]
    result.timings = {k: first.timings[k] + second.timings[k] for k in first.timings}
    result.timings["search"] = search_s
    result.timings["total"] += search_s
    return result


def _scales(space, device: torch.device) -> tuple[torch.Tensor, float, float]:
    """Return (std (k,): the square roots of the shape space's explained variances, unit:
    shape-space units -> metres, radius: the canonical's largest distance from its centroid in
    metres)."""
    from regtool.units import UNITS_TO_METRES

    std = torch.tensor(np.sqrt(np.maximum(space.explained_variance, 1e-20)),
                          dtype=torch.float64, device=device)
    unit = UNITS_TO_METRES.get(space.units, 1.0)
    radius = unit * float(np.linalg.norm(space.canonical_vertices
                                         - space.canonical_vertices.mean(0), axis=1).max())
    return std, unit, radius


def _rotation_search(problem: Problem, code: torch.Tensor, delta: torch.Tensor,
                     axis_mask: torch.Tensor, degrees: float) -> torch.Tensor:
    """Return the pose increment (6,) with the lowest loss among `delta` and its rotations by
    -`degrees`, 0, +`degrees` about every allowed rotation axis (3^k candidates, no gradients)
    for the latent code `code` (k,): gradient steps recover a misalignment of a few degrees,
    not of 10-15."""
    steps = [(-1.0, 0.0, 1.0) if float(axis_mask[i]) else (0.0,) for i in range(3)]
    rad = np.radians(degrees)
    best, best_loss = delta.clone(), float("inf")
    for a in steps[0]:
        for b in steps[1]:
            for c in steps[2]:
                cand = delta.clone()
                cand[:3] += torch.as_tensor([a * rad, b * rad, c * rad], dtype=delta.dtype,
                                            device=delta.device)
                loss = float(forward(problem, code, cand).required_loss())
                if loss < best_loss:
                    best, best_loss = cand, loss
    return best


def _centre_shift(problem: Problem, code: torch.Tensor) -> np.ndarray:
    """Return the x/y translation increment (2,) in object radii that moves the bounding-box
    centre of the rendering's silhouette (first view, initial pose) onto that of the
    observation's object region (zero without a region or an empty silhouette). Bounding-box
    centres, not centroids: the region is a dilated segmentation, and a square dilation moves
    the box's sides symmetrically."""
    observation = problem.observations[0]
    if observation.region is None or not observation.region.any():
        return np.zeros(2)
    zero = torch.zeros(6, dtype=torch.float64, device=code.device)
    rendered = forward(problem, code, zero, n_views=1, with_loss=False).masks[0]
    mask = rendered.detach().cpu().numpy().astype(bool)
    if not mask.any():
        return np.zeros(2)

    def centre(m: np.ndarray) -> np.ndarray:
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        return np.array([(cols[0] + cols[-1]) / 2.0, (rows[0] + rows[-1]) / 2.0])

    du, dv = centre(observation.region) - centre(mask)
    depth = float(observation.pose.translation[2])
    cam_k = observation.camera
    return np.array([du * depth / cam_k.fx, dv * depth / cam_k.fy]) / problem.radius


def _inverse_norm(grad: torch.Tensor) -> float:
    norm = float(grad.norm())
    return 1.0 / norm if norm > 0 else 0.0

