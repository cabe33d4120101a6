"""Registration end to end: load the artifacts, prepare observations (U-Net object region),
build the loss and the differentiable renderer, run `optimise.register`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from regtool.config import Config
from regtool.errors import RegistrationError
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.registration.figures import GifFrames
from regtool.registration.optimise import (
    Callback,
    IterationRecord,
    Observation,
    RegistrationResult,
    register,
)


def load_models(shapespace_path: Path, unet_path: Path, device: torch.device):
    """Return (ShapeSpace, UNet, unet meta); RegistrationError if the U-Net was not trained on
    the shape space's category."""
    from regtool.features.unet import load_unet
    from regtool.shapespace.space import ShapeSpace

    space = ShapeSpace.load(shapespace_path)
    unet, meta = load_unet(unet_path, device)
    categories = meta.get("categories") or []
    if isinstance(categories, str):
        categories = [categories]
    if space.category not in categories:
        raise RegistrationError(
            f"the shape space is for category '{space.category}' but the U-Net {unet_path} was "
            f"trained on {', '.join(categories) or 'unknown categories'}")
    return space, unet, meta


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """Return (1, 3, H, W) float32 of an (H, W, 3) image in [0, 1]."""
    return torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32,
                           device=device).permute(2, 0, 1)[None]


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Return the mask (H, W) bool grown by `pixels` (square structuring element)."""
    if pixels <= 0:
        return mask
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, np.ones((2 * pixels + 1, 2 * pixels + 1), bool))


def make_observation(image: np.ndarray, camera: CameraIntrinsics, pose: Pose, feature_loss,
                     dilation: int, mask: np.ndarray | None = None) -> Observation:
    """Return an Observation whose region is `mask` (or the U-Net's segmentation of the image)
    dilated by `dilation` pixels; RegistrationError if the image and camera sizes differ or no
    object is found."""
    h, w = image.shape[:2]
    if (w, h) != (camera.width, camera.height):
        raise RegistrationError(f"image is {w}x{h} but the camera is "
                                f"{camera.width}x{camera.height}")
    if mask is None:
        mask = feature_loss.segment(image_tensor(image, feature_loss.device))[0].cpu().numpy()
        if not mask.any():
            raise RegistrationError("the U-Net finds no object in the image; give --mask")
    return Observation(image=image, camera=camera, pose=pose, region=dilate(mask, dilation),
                       mask=mask)


def at_network_scale(image: np.ndarray, camera: CameraIntrinsics, pose: Pose, space,
                     unet_meta: dict, config: Config, mask: np.ndarray | None = None):
    """Return the `rescale.NetworkView` of an observation (any size) at the scale the U-Net of
    `unet_meta` was trained at, located by the shape space's canonical at the initial `pose`
    (metres); a training-size image at the training scale comes back unchanged.
    RegistrationError if the initial pose does not show the canonical (`check_pose_in_view`)."""
    from regtool.registration.inputs import check_pose_in_view
    from regtool.registration.rescale import NetworkScale, network_view
    from regtool.render.diff import DiffRenderSettings

    znear = DiffRenderSettings.from_config(config.render, image_type="rgb").znear
    vertices = canonical_in_metres(space)
    check_pose_in_view(vertices, camera, pose, znear, "initial pose")
    scale = NetworkScale.from_meta(unet_meta, config.render.fov_y_deg, config.render.distance)
    return network_view(image, camera, pose, vertices, scale, mask)


def canonical_in_metres(space) -> np.ndarray:
    """Return the shape space's canonical vertices (V, 3) in metres, the unit of every pose."""
    from regtool.units import UNITS_TO_METRES

    return np.asarray(space.canonical_vertices, np.float64) * UNITS_TO_METRES.get(space.units, 1.0)


def load_correspondence_for(space, path: Path, device: torch.device):
    """Return the correspondence network at `path` (eval mode) after checking it was trained
    on the shape space's category; ArtifactError / RegistrationError otherwise."""
    from regtool.correspondence.network import load_correspondence

    model, meta = load_correspondence(path, device)
    if meta.get("category") != space.category:
        raise RegistrationError(
            f"the shape space is for category '{space.category}' but the correspondence network "
            f"{path} was trained on '{meta.get('category')}'")
    return model


def run_registration(space, unet, observations: list[Observation], config: Config,
                     device: torch.device, joint: bool | None = None,
                     callback: Callable[[IterationRecord], None] | None = None,
                     callbacks: Sequence[Callback] = (),
                     start_code: np.ndarray | None = None,
                     correspondence=None) -> RegistrationResult:
    """Register the shape space to the observations; `joint` overrides config.register.joint,
    `start_code` (k,) is the latent code to start from (`optimise.register`; None: config).
    `callback` gets every loss evaluation's record (a progress bar), `callbacks` the whole
    `IterationEvent`; with config.register.gif the result carries the kept descent's GIF frames.

    With `config.register.backward == "learned"` in joint mode, `correspondence` (a network
    from `load_correspondence_for`) predicts the fields that drive the pose
    (`learned.register_learned`); RegistrationError if it is missing.
    RegistrationError before any optimisation if an initial pose does not show the canonical
    (`inputs.check_pose_in_view`); RenderError if a view is larger, supersampled, than the
    OpenGL context renders."""
    from regtool.features.compare import FeatureLoss
    from regtool.registration.inputs import check_pose_in_view
    from regtool.render.context import check_render_size
    from regtool.render.diff import DiffRenderSettings, diff_render_supersampled

    reg = config.register if joint is None else replace(config.register, joint=joint)
    if reg.joint and reg.candidates:
        return _best_candidate(space, unet, observations, replace(config, register=reg), device,
                               callback, callbacks, start_code, correspondence)
    loss = FeatureLoss(unet, reg.loss, reg.weighting, reg.mask_dilation)
    observed = [image_tensor(o.image, device) for o in observations]
    regions = [None if o.region is None else
               torch.as_tensor(o.region, device=device)[None, None] for o in observations]
    settings = DiffRenderSettings.from_config(config.render)
    canonical = canonical_in_metres(space)
    for i, o in enumerate(observations):
        where = "initial pose" + (f" of view {i + 1}" if len(observations) > 1 else "")
        check_pose_in_view(canonical, o.camera, o.pose, settings.znear, where)
        check_render_size(o.camera.width, o.camera.height, max(1, reg.supersample))
    faces = torch.tensor(space.faces, dtype=torch.int64)

    def loss_fn(rendered: torch.Tensor, i: int) -> torch.Tensor:
        return loss(rendered, observed[i], regions[i])

    def render_fn(vertices_cam: torch.Tensor, camera: CameraIntrinsics):
        # Anti-aliased: the observation is anti-aliased too, and a hard-rasterised silhouette
        # makes the loss jump as single pixels flip (at 160x120 the shapes differ by 1-3 pixels).
        return diff_render_supersampled(vertices_cam, faces, camera, settings, reg.supersample)

    gif = GifFrames() if reg.gif else None
    hooks = list(callbacks)
    if callback is not None:
        hooks.append(lambda event: callback(event.record))
    if gif is not None:
        hooks.append(gif)
    if reg.backward == "learned" and reg.joint:
        from regtool.correspondence.network import network_estimator
        from regtool.registration.learned import register_learned
        from regtool.registration.optimise import _scales

        if correspondence is None:
            raise RegistrationError("register.backward = 'learned' needs a correspondence "
                                    "network (--correspondence, from train-correspondence)")
        radius = _scales(space, device)[2]
        estimator = network_estimator(correspondence, [o.image for o in observations],
                                      [o.mask for o in observations], radius, device)
        result = register_learned(space, observations, loss_fn, render_fn, reg, device,
                                  estimator, callbacks=hooks)
    else:
        result = register(space, observations, loss_fn, render_fn, reg, device,
                          callbacks=hooks, start_code=start_code)
    if gif is not None:
        result.frames = gif.frames(result.kept_descent)
    return result


def candidate_settings(name: str, reg) -> dict:
    """Return the `RegisterConfig` overrides of the joint-registration variant `name` of
    `register.candidates` ("grid", "no-grid" or "learned")."""
    if name == "grid":
        return {"backward": "analytic", "pose_search_deg": reg.pose_search_deg or 10.0}
    if name == "no-grid":
        return {"backward": "analytic", "pose_search_deg": 0.0}
    if name == "learned":
        return {"backward": "learned"}
    raise RegistrationError(f"unknown registration candidate '{name}' "
                            f"(use grid, no-grid or learned)")


def _best_candidate(space, unet, observations: list[Observation], config: Config,
                    device: torch.device, callback, callbacks: Sequence[Callback],
                    start_code: np.ndarray | None, correspondence) -> RegistrationResult:
    """Return the joint registration with the lowest final loss among `config.register
    .candidates`, each run from the same start by `run_registration`; its `descents` list every
    candidate's descents (each with "candidate": the name; "kept" only in the chosen one's),
    its timings the chosen one's plus "total" (all candidates) and "candidate_<name>"
    (seconds each)."""
    reg = config.register
    if "learned" in reg.candidates and correspondence is None:
        raise RegistrationError("register.candidates names 'learned', which needs a "
                                "correspondence network (--correspondence, from "
                                "train-correspondence)")
    results = []
    for name in dict.fromkeys(reg.candidates):  # each name once, in the given order
        settings = replace(reg, candidates=(), **candidate_settings(name, reg))
        results.append((name, run_registration(space, unet, observations,
                                               replace(config, register=settings), device,
                                               joint=True, callback=callback,
                                               callbacks=callbacks, start_code=start_code,
                                               correspondence=correspondence)))
    best = min((r for _, r in results), key=lambda r: r.best_loss)
    best.descents = [{**d, "candidate": name,
                      "kept": r is best and bool(d.get("kept", "descent" in d))}
                     for name, r in results for d in r.descents]
    best.timings = {**best.timings,
                    **{f"candidate_{name}": r.timings["total"] for name, r in results},
                    "total": sum(r.timings["total"] for _, r in results)}
    return best


_STOP_REASONS = {"iterations": "at the iteration limit", "plateau": "on a plateau",
                 "diverged": "diverged", "field below stop_px": "with the field below "
                 "register.field_stop_px", "no valid field": "without a valid field"}


def summary_line(result: RegistrationResult) -> str:
    """Return one console line: the first loss (result.json's `initial_loss`) -> the best loss,
    each descent's loss evaluations (iterations + 1 final evaluation + the joint mode's pose
    warm-up) and why it stopped, which descent was kept, and the total seconds."""
    parts = []
    for d in result.descents:
        kept = ", kept" if d.get("kept") and len(result.descents) > 1 else ""
        warmup = f" incl. {d['pose_warmup']} pose warm-up" if d["pose_warmup"] else ""
        which = f"{d['candidate']}, " if "candidate" in d else ""
        parts.append(f"{which}from the {d['start']}: {len(d['losses'])} evaluations{warmup}, "
                     f"stopped "
                     f"{_STOP_REASONS.get(d['stop_reason'], d['stop_reason'])}{kept}")
    return (f"loss {result.initial_loss:.5f} -> {result.best_loss:.5f} "
            f"({'; '.join(parts)}; {result.timings['total']:.1f} s)")
