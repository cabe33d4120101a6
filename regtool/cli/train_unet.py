"""`regtool train-unet`: train the U-Net feature extractor on rendered views of a category."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from regtool.cli.app import (
    ConfigOption,
    app,
    command_config,
    console,
    options,
    progress_bar,
    reported_errors,
)


@app.command("train-unet")
def train_unet_command(
    ctx: typer.Context,
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Dataset folder (with manifest)."),
    category: str = typer.Option(..., "--category", help="Category name, comma-separated "
                                 "names, or 'all' (one label per category)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Checkpoint to write "
                                       "(default: runs/<category>/unet.pt)."),
    config: Optional[Path] = ConfigOption,
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint at --out."),
    backgrounds: Optional[Path] = typer.Option(
        None, "--backgrounds", help="Folder of images used as random backgrounds."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override unet.steps."),
) -> None:
    """Train the U-Net (segmentation; its last feature map is the comparison space of
    `register`) on views of the TRAINING meshes rendered on the fly; report validation IoU and
    IoU on views of the test meshes."""
    from regtool.device import resolve_device
    from regtool.features.train import side_paths, train_unet
    from regtool.io import check_output_file

    with reported_errors(ctx):
        cfg = command_config(ctx, config, {"unet": {"steps": steps}})
        opts = options(ctx)
        device = resolve_device(opts.device)
        name = category.replace(",", "+")
        out = out if out is not None else Path("runs") / name / "unet.pt"
        check_output_file(out)
        with progress_bar("train-unet", cfg.unet.steps) as advance:
            state: dict[str, int | None] = {"step": None}

            def report(step: int, total: int, info: dict) -> None:
                last = state["step"]
                n = step if last is None else step - last
                state["step"] = step
                val, test = info["val_iou"], info["test_iou"]
                text = (f"loss {info['loss']:.3f}" +
                        ("" if math.isnan(val) else f"  val IoU {val:.3f}") +
                        ("" if math.isnan(test) else f"  test IoU {test:.3f}"))
                advance(n, text)

            metrics = train_unet(dataset, category, cfg.unet, cfg.render, out, device,
                                 opts.seed, resume=resume, progress=report,
                                 backgrounds_dir=backgrounds)
        paths = side_paths(out)
        console.print(f"step {metrics['step']}: val IoU {metrics['val_iou']:.3f} "
                      f"(held-out views of training meshes), test IoU "
                      f"{metrics['test_iou']:.3f} (test meshes, never trained on); "
                      f"{metrics['train_seconds']:.0f} s")
        console.print(f"checkpoint [bold]{out}[/bold]; metrics {paths['json']}; "
                      f"curve {paths['curve']}; samples {paths['samples']}")
