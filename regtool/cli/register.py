"""`regtool register`: fit the shape space to one or more observed images."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from regtool.cli.app import (
    ConfigOption,
    app,
    command_config,
    console,
    options,
    progress_bar,
    reported_errors,
    warn,
)


def _per_view(values: list[Path], n: int, what: str) -> list[Path]:
    from regtool.errors import RegistrationError

    if len(values) == n:
        return values
    if len(values) == 1:
        return values * n
    raise RegistrationError(f"{n} images but {len(values)} {what} files: give one, or one per "
                            f"image")


@app.command("register")
def register_command(
    ctx: typer.Context,
    shapespace: Path = typer.Option(..., "--shapespace", help="Shape space (.npz)."),
    unet: Path = typer.Option(..., "--unet", help="U-Net checkpoint (.pt)."),
    image: List[Path] = typer.Option(..., "--image", help="Observed RGB image (PNG/JPG); "
                                     "repeat for several views of the same object."),
    camera: List[Path] = typer.Option(..., "--camera", help="Camera intrinsics JSON "
                                      "(one, or one per image)."),
    pose: List[Path] = typer.Option(..., "--pose", help="Initial object->camera pose JSON "
                                    "(one per image)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    joint: bool = typer.Option(False, "--joint", help="Also optimise the pose."),
    mask: Optional[List[Path]] = typer.Option(None, "--mask", help="Object mask PNG per image "
                                              "(default: the U-Net's segmentation)."),
    transfer: Optional[Path] = typer.Option(None, "--transfer", help="Named points on the "
                                            "canonical (JSON) to map onto the result."),
    resize: bool = typer.Option(False, "--resize", help="Resize images whose size differs "
                                "from the camera's (default: refuse them)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", help="Override "
                                             "register.iterations."),
    backward: Optional[str] = typer.Option(
        None, "--backward", help="Joint mode's pose: 'analytic' (image gradients) or "
        "'learned' (a correspondence field drives the pose; needs --correspondence)."),
    correspondence: Optional[Path] = typer.Option(
        None, "--correspondence", help="Correspondence network (.pt, from "
        "train-correspondence) for --backward learned."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Register the category's canonical mesh to observed image(s): writes the deformed mesh
    (PLY, OBJ), result.json, overlay.png and optimisation.gif."""
    import numpy as np

    from regtool.device import resolve_device, torch_threads
    from regtool.errors import RegistrationError
    from regtool.features.compare import FeatureLoss
    from regtool.io import check_output_dir
    from regtool.registration.inputs import read_camera, read_image, read_mask, read_pose
    from regtool.registration.pipeline import (
        load_models,
        make_observation,
        run_registration,
        summary_line,
    )
    from regtool.registration.result import ViewResult, software_versions, write_registration
    from regtool.render.context import check_render_size

    with reported_errors(ctx):
        cfg = command_config(ctx, config, {"register": {"iterations": iterations,
                                                   "joint": True if joint else None,
                                                   "backward": backward}})
        if cfg.register.backward == "learned" and correspondence is None:
            raise RegistrationError("--backward learned needs --correspondence FILE (a "
                                    "network from train-correspondence)")
        device = resolve_device(options(ctx).device)
        check_output_dir(out)  # created only when the results are written
        cameras = [read_camera(p) for p in _per_view(camera, len(image), "camera")]
        for c in cameras:  # before any work: the supersampled size must fit the GL limits
            check_render_size(c.width, c.height, cfg.register.supersample)
        if len(pose) != len(image):
            raise RegistrationError(f"{len(image)} images but {len(pose)} pose files: give one "
                                    f"pose per image")
        poses = [read_pose(p) for p in pose]
        masks: list[np.ndarray | None] = [None] * len(image)
        if mask:
            masks = [read_mask(p, (c.width, c.height), resize)
                     for p, c in zip(_per_view(mask, len(image), "mask"), cameras)]
        images = [read_image(p, (c.width, c.height), resize) for p, c in zip(image, cameras)]
        named = None
        space, net, _meta = load_models(shapespace, unet, device)
        corr_net = None
        if correspondence is not None:
            from regtool.registration.pipeline import load_correspondence_for

            corr_net = load_correspondence_for(space, correspondence, device)
        if transfer is not None:
            from regtool.registration.transfer import (
                SURFACE_TOLERANCE,
                far_from_surface,
                read_named_points,
            )

            named = read_named_points(transfer, space.units)
            far = far_from_surface(space.canonical_vertices, space.faces, named)
            if far:
                listed = ", ".join(f"{n} ({d:.3g} {space.units})" for n, d in far.items())
                warn(f"transfer points further than {SURFACE_TOLERANCE:.0%} of the object's "
                     f"size from the canonical's surface: {listed}; they are projected onto "
                     f"it (another frame or unit? see result.json transfer.far_from_surface)")
        loss = FeatureLoss(net, cfg.register.loss)
        observations = [make_observation(im, c, p, loss, cfg.register.mask_dilation, m)
                        for im, c, p, m in zip(images, cameras, poses, masks)]
        reg = cfg.register
        steps = reg.iterations + 1 + (reg.pose_warmup if reg.joint else 0)
        with (progress_bar("register", steps * (2 if reg.start == "search" else 1)) as advance,
              torch_threads(reg.threads)):
            result = run_registration(space, net, observations, cfg, device,
                                      callback=lambda rec: advance(1, f"loss {rec.loss:.5f}"),
                                      correspondence=corr_net)
        extra = {"category": space.category, "units": space.units,
                 "stop_reason": result.stop_reason, "initial_loss": result.initial_loss,
                 "descents": result.descents,
                 "shapespace": str(shapespace), "unet": str(unet),
                 "backward": cfg.register.backward,
                 "correspondence": None if correspondence is None else str(correspondence),
                 "history": [{"iteration": h.iteration, "loss": h.loss, "lr": h.lr,
                                 "pose_step": h.pose_step, "seconds": h.seconds}
                                for h in result.history]}
        if named is not None:
            from regtool.registration.transfer import transfer_record

            extra["transfer"] = transfer_record(space.canonical_vertices, space.faces,
                                                result.vertices, named, space.units)
        from regtool.render.context import get_context

        views = [ViewResult(observed=o.image, rendered=img, rendered_mask=m, pose=p,
                            camera=o.camera, initial_pose=o.pose, observed_mask=o.mask,
                            image_path=str(path))
                 for o, img, m, p, path in zip(observations, result.final_images,
                                               result.final_masks, result.poses, image)]
        from regtool.config import config_to_dict

        paths = write_registration(
            out, vertices=result.vertices, faces=space.faces, z=np.asarray(result.z),
            views=views, losses=[h.loss for h in result.history],
            frames=result.frames or None, timings=result.timings,
            versions=software_versions(get_context().info()["renderer"]),
            config=config_to_dict(cfg), extra=extra)
        console.print(summary_line(result))
        names = ", ".join(sorted(p.name for p in paths.values()))
        console.print(f"results in [bold]{out}[/bold]: {names}")
