"""`regtool train-correspondence`: train the correspondence-field network of a category."""

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


@app.command("train-correspondence")
def train_correspondence_command(
    ctx: typer.Context,
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Dataset folder (with manifest)."),
    category: str = typer.Option(..., "--category", help="Category name."),
    shapespace: Optional[Path] = typer.Option(
        None, "--shapespace", help="The category's shape space (default: "
        "runs/<category>/shapespace.npz)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Checkpoint to write "
                                       "(default: runs/<category>/correspondence.pt)."),
    config: Optional[Path] = ConfigOption,
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint at --out."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Override correspondence.steps."),
) -> None:
    """Train the correspondence network (observed RGB + rendering's G-buffer -> where each
    rendered pixel lies in the observation) on pairs rendered on the fly from the TRAINING
    meshes; report the end-point error on validation pairs and on pairs of the test meshes,
    against the zero field's."""
    from regtool.correspondence.train import train_correspondence
    from regtool.device import resolve_device
    from regtool.features.train import side_paths
    from regtool.io import check_output_file

    with reported_errors(ctx):
        cfg = command_config(ctx, config, {"correspondence": {"steps": steps}})
        opts = options(ctx)
        device = resolve_device(opts.device)
        out = out if out is not None else Path("runs") / category / "correspondence.pt"
        space = shapespace if shapespace is not None else \
            Path("runs") / category / "shapespace.npz"
        check_output_file(out)
        with progress_bar("train-correspondence", cfg.correspondence.steps) as advance:
            state: dict[str, int | None] = {"step": None}

            def report(step: int, total: int, info: dict) -> None:
                last = state["step"]
                n = step if last is None else step - last
                state["step"] = step
                val, test = info["val_epe"], info["test_epe"]
                text = (f"loss {info['loss']:.3f}" +
                        ("" if math.isnan(val) else f"  val EPE {val:.2f} px") +
                        ("" if math.isnan(test) else f"  test EPE {test:.2f} px"))
                advance(n, text)

            metrics = train_correspondence(dataset, category, space, cfg.correspondence,
                                           cfg.render, out, device, opts.seed, resume=resume,
                                           progress=report)
        paths = side_paths(out)
        console.print(f"step {metrics['step']}: end-point error on validation pairs "
                      f"{metrics['val_epe']:.2f} px (zero field {metrics['val_zero_epe']:.2f}),"
                      f" on test-mesh pairs {metrics['test_epe']:.2f} px (zero field "
                      f"{metrics['test_zero_epe']:.2f}; ratio {metrics['test_ratio']:.2f}); "
                      f"{metrics['train_seconds']:.0f} s")
        console.print(f"checkpoint [bold]{out}[/bold]; metrics {paths['json']}; "
                      f"curve {paths['curve']}; fields {paths['samples']}")
