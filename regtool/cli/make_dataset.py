"""`regtool make-dataset` and `regtool check-dataset`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from regtool.cli.app import (
    ConfigOption,
    app,
    command_config,
    console,
    err_console,
    options,
    progress_bar,
    reported_errors,
)


@app.command("make-dataset")
def make_dataset_command(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write; an existing "
                             "one is replaced only if it holds a regtool dataset and nothing "
                             "else (or is empty)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out "
                                   "folder whatever it holds."),
    categories: Optional[str] = typer.Option(
        None, "--categories", help="Comma-separated categories (bottle,camera,drill,spray)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="Training meshes/category."),
    n_test: Optional[int] = typer.Option(None, "--n-test", help="Test meshes per category."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Generate the built-in procedural dataset (meshes, evaluation points, manifest,
    contact sheets)."""
    from regtool.data.generate import make_dataset

    with reported_errors(ctx):
        cats = None if categories is None else [c.strip() for c in categories.split(",")
                                                if c.strip()]
        cfg = command_config(ctx, config, {"make_dataset": {"categories": cats, "n_train": n_train,
                                                       "n_test": n_test}}).make_dataset
        total = len(cfg.categories) * (1 + cfg.n_train + cfg.n_test + int(cfg.contact_sheet))
        with progress_bar("make-dataset", total) as advance:
            manifest = make_dataset(out, cfg, options(ctx).seed,
                                    progress=lambda name: advance(1, name), overwrite=overwrite)
        n = {c: (len(e.train), len(e.test)) for c, e in manifest.categories.items()}
        for c, (tr, te) in n.items():
            console.print(f"{c}: canonical + {tr} train + {te} test")
        console.print(f"dataset written to [bold]{out}[/bold] (manifest: {out / 'manifest.json'})")


@app.command("check-dataset")
def check_dataset_command(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", help="Manifest to check against (default: DATASET/manifest.json)."),
    no_hashes: bool = typer.Option(False, "--no-hashes", help="Do not compare sha256."),
    fast: bool = typer.Option(False, "--fast", help="Check presence and hashes only; do not "
                              "load the meshes and point sets (no content checks, no "
                              "warnings)."),
) -> None:
    """Verify a dataset against its manifest (files present, sha256 equal) and load every mesh
    and point file (finite, non-empty, valid faces); warn about a canonical far from the origin
    and meshes whose size differs from the canonical's by more than 3x (a units mix-up)."""
    from regtool.data.dataset import content_findings
    from regtool.data.manifest import verify_dataset
    from regtool.errors import DatasetError

    with reported_errors(ctx):
        m = verify_dataset(dataset, manifest, check_hashes=not no_hashes)
        warnings: list[str] = []
        if not fast:
            problems, warnings = content_findings(dataset, m)
            if problems:
                more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
                raise DatasetError(f"dataset {dataset}: " + "; ".join(problems[:5]) + more)
        for w in warnings:
            err_console.print(f"[yellow]warning:[/yellow] {w}")
        checked = "files present" if no_hashes else "hashes match"
        if not fast:
            checked += ", contents valid"
        for c, e in m.categories.items():
            console.print(f"{c}: canonical + {len(e.train)} train + {len(e.test)} test: ok")
        console.print(f"dataset {dataset} matches its manifest ({checked}; units: {m.units}"
                      f"{f'; {len(warnings)} warnings' if warnings else ''})")
