"""`regtool build-shapespace` and `regtool inspect-shapespace`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from regtool.cli.app import (
    ConfigOption,
    RayAddressOption,
    app,
    command_config,
    console,
    err_console,
    options,
    progress_bar,
    reported_errors,
)


@app.command("build-shapespace")
def build_shapespace_command(
    ctx: typer.Context,
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Dataset folder (with manifest)."),
    category: str = typer.Option(..., "--category", help="Category to build, e.g. bottle."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output .npz (default runs/<category>/shapespace.npz); the "
        ".json report is written next to it."),
    latent_dim: Optional[int] = typer.Option(None, "--latent-dim", help="Latent dimensions."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Run the per-instance CPD "
                                           "fits as tasks: local (processes on this machine) "
                                           "or ray (default: one after the other here)."),
    ray_address: Optional[str] = RayAddressOption,
    workers: Optional[int] = typer.Option(None, "--workers", help="With --executor: parallel "
                                          "workers (default: one per core of this machine)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Learn a category's latent shape space: CPD canonical -> each training mesh, PCA over
    the displacement fields; writes the .npz artifact and a .json report."""
    import contextlib
    import os

    from regtool.batch.executor import check_executor, opened
    from regtool.device import resolve_device
    from regtool.shapespace.build import build_shapespace

    with reported_errors(ctx):
        cfg = command_config(ctx, config, {"shapespace": {"latent_dim": latent_dim}}).shapespace
        opts = options(ctx)
        out_path = out if out is not None else Path("runs") / category / "shapespace.npz"
        if out_path.suffix != ".npz":
            out_path = out_path.with_suffix(".npz")
        device = resolve_device(opts.device)
        pool: Any = contextlib.nullcontext(None)
        if executor is not None or ray_address is not None or workers is not None:
            check_executor(executor or "local", ray_address)
            count = workers if workers is not None else (os.cpu_count() or 1)
            pool = opened(executor or "local", count, address=ray_address, threads=1, gl=False)
        with progress_bar(f"CPD {category}", None) as advance, pool as tasks:
            space, report = build_shapespace(
                dataset, category, cfg, opts.seed, device,
                progress=lambda name, done, total: advance(1, name, total), executor=tasks)
        for warning in report["warnings"]:
            err_console.print(f"[yellow]warning:[/yellow] {warning}")
        path = space.save(out_path, report)
        s = report["summary"]
        u = report["units"]
        console.print(f"{category}: latent dim {space.latent_dim}, explained variance ratio "
                      f"{sum(report['explained_variance_ratio']):.3f}")
        console.print(f"mean distance to canonical {s['mean_canonical_error']:.5f} {u}, "
                      f"to CPD result {s['mean_cpd_residual']:.5f} {u}, to latent "
                      f"reconstruction {s['mean_latent_error']:.5f} {u} "
                      f"({100 * s['latent_vs_canonical_reduction']:.1f}% lower than canonical)")
        console.print(f"shape space written to [bold]{path}[/bold] "
                      f"(report: {path.with_suffix('.json')})")


@app.command("inspect-shapespace")
def inspect_shapespace_command(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="Shape space .npz file."),
) -> None:
    """Load a shape space artifact, check it, and print its summary."""
    from regtool.shapespace.space import ShapeSpace

    with reported_errors(ctx):
        space = ShapeSpace.load(path)
        console.print(f"{path}: category {space.category}, units {space.units}, "
                      f"{space.num_vertices} vertices, {len(space.faces)} faces, latent dim "
                      f"{space.latent_dim} ({space.basis_kind}), "
                      f"{len(space.train_names)} training instances")
        ratio = ", ".join(f"{r:.3f}" for r in space.explained_variance_ratio)
        console.print(f"explained variance ratio: {ratio}")
        console.print(f"symmetry: {symmetry_text(space)}")


def symmetry_text(space) -> str:
    """Return the shape space's declared symmetries in words (object frame, its units)."""
    def vec(v) -> str:
        return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"

    parts = []
    if space.symmetry is not None:
        parts.append(f"axis {vec(space.symmetry.axis)} through {vec(space.symmetry.point)}")
    if space.mirror is not None:
        parts.append(f"mirror plane with normal {vec(space.mirror.normal)} through "
                     f"{vec(space.mirror.point)}")
    return "; ".join(parts) or "none declared"
