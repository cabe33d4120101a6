"""One registration job end to end, as `regtool register` runs it: read the inputs, load (or
reuse) the models, register, and write the result folder. `regtool register` is one call of
`register_job`; `regtool register-batch` calls the same function for every job."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtool.config import Config, RegisterConfig
from regtool.errors import RegistrationError
from regtool.geometry.camera import Pose
from regtool.registration.optimise import IterationRecord, RegistrationResult


@dataclass(frozen=True)
class JobInputs:
    """The files of one registration: images (one per view), cameras and masks (one, or one per
    image), poses (one per image; may be empty when `register_job` gets `start_poses`), named
    points to transfer, and whether images/masks of another size are resized."""

    images: tuple[Path, ...]
    cameras: tuple[Path, ...]
    poses: tuple[Path, ...] = ()
    masks: tuple[Path, ...] = ()
    transfer: Path | None = None
    resize: bool = False


@dataclass
class JobOutput:
    """What `register_job` produced: the registration result, the written files {name: path},
    and the warnings it gave (also passed to the `warn` callback as they arise)."""

    result: RegistrationResult
    paths: dict[str, Path]
    warnings: list[str] = field(default_factory=list)


def per_view(values: Sequence[Path], n: int, what: str) -> list[Path]:
    """Return `values` as one entry per view: one value repeated n times, or n values;
    RegistrationError otherwise."""
    if len(values) == n:
        return list(values)
    if len(values) == 1:
        return list(values) * n
    raise RegistrationError(f"{n} images but {len(values)} {what} files: give one, or one per "
                            f"image")


def registration_steps(reg: RegisterConfig) -> int:
    """Return the number of loss evaluations `register` reports through its callback at most
    (the length of a progress bar): iterations + 1 (+ the pose warm-up in joint mode) per
    descent, two descents with `start = "search"`, once per `candidates` entry in joint mode."""
    steps = reg.iterations + 1 + (reg.pose_warmup if reg.joint else 0)
    runs = len(set(reg.candidates)) if reg.joint and reg.candidates else 1
    return steps * (2 if reg.start == "search" else 1) * runs


def register_job(out: Path, shapespace: Path, unet: Path, inputs: JobInputs, cfg: Config,
                 device: torch.device, *, models: tuple[Any, Any, dict] | None = None,
                 start_code: np.ndarray | None = None,
                 start_poses: Sequence[Pose] | None = None,
                 callback: Callable[[IterationRecord], None] | None = None,
                 warn: Callable[[str], None] | None = None,
                 correspondence: Path | None = None) -> JobOutput:
    """Register the shape space to the job's observations and write `out` (deformed.ply,
    deformed.obj, result.json, overlay.png, optimisation.gif; `write_registration`).

    `models`: (ShapeSpace, UNet, U-Net meta) already loaded from `shapespace` and `unet`
    (`pipeline.load_models`; None: load them). Each image is brought to the scale the U-Net was
    trained at (`pipeline.at_network_scale`), whatever its size.
    `start_code` (k,): latent code to start from (one descent, `optimise.register`);
    `start_poses`: initial object -> camera poses (one per image, metres) replacing
    the pose files. `correspondence`: the network of the learned backward
    (config.register.backward = "learned"). RegistrationError / ArtifactError / RenderError /
    OutputError for bad input,
    raised before anything is written; `out` then holds no new file.
    """
    from regtool.config import config_to_dict
    from regtool.device import torch_threads
    from regtool.features.compare import FeatureLoss
    from regtool.io import check_output_dir
    from regtool.registration.inputs import read_camera, read_image, read_mask, read_pose
    from regtool.registration.pipeline import (
        at_network_scale,
        load_models,
        make_observation,
        run_registration,
    )
    from regtool.registration.result import ViewResult, software_versions, write_registration
    from regtool.render.context import get_context

    warnings: list[str] = []

    def warning(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    image = list(inputs.images)
    check_output_dir(out)  # created only when the results are written
    cameras = [read_camera(p) for p in per_view(inputs.cameras, len(image), "camera")]
    if start_poses is not None:
        if len(start_poses) != len(image):
            raise RegistrationError(f"{len(image)} images but {len(start_poses)} start poses")
        poses = list(start_poses)
    else:
        if len(inputs.poses) != len(image):
            raise RegistrationError(f"{len(image)} images but {len(inputs.poses)} pose files: "
                                    f"give one pose per image")
        poses = [read_pose(p) for p in inputs.poses]
    masks: list[np.ndarray | None] = [None] * len(image)
    if inputs.masks:
        masks = [read_mask(p, (c.width, c.height), inputs.resize)
                 for p, c in zip(per_view(inputs.masks, len(image), "mask"), cameras)]
    images = [read_image(p, (c.width, c.height), inputs.resize) for p, c in zip(image, cameras)]
    named = None
    space, net, meta = models if models is not None else load_models(shapespace, unet, device)
    corr_net = None
    if correspondence is not None:
        from regtool.registration.pipeline import load_correspondence_for

        corr_net = load_correspondence_for(space, correspondence, device)
    # Any image size: each view at the scale the U-Net was trained at (the camera follows).
    net_views = [at_network_scale(im, c, p, space, meta, cfg, m)
                 for im, c, p, m in zip(images, cameras, poses, masks)]
    for k, nv in enumerate(net_views):
        for line in nv.warnings:
            warning(line if len(net_views) == 1 else f"image {k + 1}: {line}")
    if inputs.transfer is not None:
        from regtool.registration.transfer import (
            SURFACE_TOLERANCE,
            far_from_surface,
            read_named_points,
        )

        named = read_named_points(inputs.transfer, space.units)
        far = far_from_surface(space.canonical_vertices, space.faces, named)
        if far:
            listed = ", ".join(f"{n} ({d:.3g} {space.units})" for n, d in far.items())
            warning(f"transfer points further than {SURFACE_TOLERANCE:.0%} of the object's "
                    f"size from the canonical's surface: {listed}; they are projected onto "
                    f"it (another frame or unit? see result.json transfer.far_from_surface)")
    loss = FeatureLoss(net, cfg.register.loss)
    observations = [make_observation(nv.image, nv.camera, p, loss, cfg.register.mask_dilation,
                                     nv.mask) for nv, p in zip(net_views, poses)]
    with torch_threads(cfg.register.threads):
        result = run_registration(space, net, observations, cfg, device, callback=callback,
                                  start_code=start_code, correspondence=corr_net)
    extra = {"category": space.category, "units": space.units,
             "stop_reason": result.stop_reason, "initial_loss": result.initial_loss,
             "descents": result.descents,
             "shapespace": str(shapespace), "unet": str(unet),
             "backward": cfg.register.backward,
             "correspondence": None if correspondence is None else str(correspondence),
             "network_views": [nv.record() for nv in net_views],
             "history": [{"iteration": h.iteration, "loss": h.loss, "lr": h.lr,
                          "pose_step": h.pose_step, "seconds": h.seconds}
                         for h in result.history]}
    from regtool.registration.refine import refinement_record

    extra["refinement"] = refinement_record(result, space.units)
    if named is not None:
        from regtool.registration.transfer import transfer_record

        extra["transfer"] = transfer_record(space.canonical_vertices, space.faces,
                                            result.vertices, named, space.units)
    views = [ViewResult(observed=o.image, rendered=img, rendered_mask=m, pose=p,
                        camera=o.camera, initial_pose=o.pose, observed_mask=o.mask,
                        image_path=str(path))
             for o, img, m, p, path in zip(observations, result.final_images,
                                           result.final_masks, result.poses, image)]
    paths = write_registration(
        out, vertices=result.vertices, faces=space.faces, z=np.asarray(result.z),
        views=views, losses=[h.loss for h in result.history],
        frames=result.frames or None, timings=result.timings,
        versions=software_versions(get_context().info()["renderer"]),
        config=config_to_dict(cfg), extra=extra)
    return JobOutput(result, paths, warnings)
