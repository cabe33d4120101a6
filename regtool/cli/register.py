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
    import contextlib

    from regtool.device import resolve_device
    from regtool.errors import RegistrationError
    from regtool.registration.job import JobInputs, register_job, registration_steps
    from regtool.registration.pipeline import summary_line

    with reported_errors(ctx):
        cfg = command_config(ctx, config, {"register": {"iterations": iterations,
                                                   "joint": True if joint else None,
                                                   "backward": backward}})
        if cfg.register.backward == "learned" and correspondence is None:
            raise RegistrationError("--backward learned needs --correspondence FILE (a "
                                    "network from train-correspondence)")
        device = resolve_device(options(ctx).device)
        inputs = JobInputs(images=tuple(image), cameras=tuple(camera), poses=tuple(pose),
                           masks=tuple(mask or ()), transfer=transfer, resize=resize)
        with contextlib.ExitStack() as stack:
            bar: list = []  # the progress bar opens at the first iteration, after the checks

            def advance(rec) -> None:
                if not bar:
                    bar.append(stack.enter_context(
                        progress_bar("register", registration_steps(cfg.register))))
                bar[0](1, f"loss {rec.loss:.5f}")

            output = register_job(out, shapespace, unet, inputs, cfg, device, callback=advance,
                                  warn=warn, correspondence=correspondence)
        console.print(summary_line(output.result))
        names = ", ".join(sorted(p.name for p in output.paths.values()))
        console.print(f"results in [bold]{out}[/bold]: {names}")
