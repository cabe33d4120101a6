"""`regtool import-dataset`: a folder of one's own meshes -> a regtool dataset."""

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


@app.command("import-dataset")
def import_dataset_command(
    ctx: typer.Context,
    src: Path = typer.Argument(..., help="Folder of meshes (.ply .obj .stl .off .glb), one "
                               "per instance, all in one frame and unit."),
    category: str = typer.Option(..., "--category", help="Category name, e.g. mug."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write (an existing "
                             "regtool dataset there is replaced; anything else only with "
                             "--overwrite)."),
    units: str = typer.Option("m", "--units", help="Length unit of the meshes: m, cm or mm "
                              "(kept in the dataset)."),
    canonical: str = typer.Option("medoid", "--canonical", help="Canonical mesh: a file name "
                                  "without suffix, or medoid (the training mesh closest to the "
                                  "others, symmetric Chamfer distance)."),
    test: Optional[str] = typer.Option(None, "--test", help="Comma-separated test meshes."),
    test_count: Optional[int] = typer.Option(
        None, "--test-count", help="Number of test meshes drawn with --seed (default 0)."),
    points_dir: Optional[Path] = typer.Option(
        None, "--points-dir", help="Folder of evaluation points per test mesh (NAME.ext or "
        "NAME_points.ext; .ply .npy .xyz .txt .pcd); default: sampled on the test mesh."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it is "
                                   "not a regtool dataset."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Import your own meshes as a dataset: choose the canonical and test split, recentre all
    meshes on the canonical's bounding-box centre, repair open meshes, write the manifest."""
    from regtool.data.dataset import content_findings
    from regtool.data.importer import import_dataset

    with reported_errors(ctx):
        cfg = command_config(ctx, config).make_dataset
        tests = None if test is None else [t.strip() for t in test.split(",") if t.strip()]
        with progress_bar("import-dataset", None) as advance:
            manifest = import_dataset(src, category, out, units=units, canonical=canonical,
                                      test=tests, test_count=test_count, points_dir=points_dir,
                                      overwrite=overwrite, seed=options(ctx).seed,
                                      eval_points=cfg.eval_points,
                                      progress=lambda name: advance(1, name))
        c = manifest.categories[category]
        how = manifest.extra["importer"]["canonical"]
        console.print(f"{category}: canonical {c.canonical.name} ({how}) + {len(c.train)} train "
                      f"+ {len(c.test)} test")
        assert c.offset is not None  # import_dataset always records the offset
        offset = ", ".join(f"{x:.6g}" for x in c.offset)
        console.print(f"recentred: offset ({offset}) {manifest.units} added to every mesh "
                      f"and point set")
        for name, steps in c.extra["repaired"].items():
            console.print(f"repaired {c.extra['sources'][name]}: {'; '.join(steps)}")
        for t in c.test:
            console.print(f"evaluation points of {t.mesh.name}: {t.points_source}")
        _, warnings = content_findings(out, manifest)
        for w in warnings:
            err_console.print(f"[yellow]warning:[/yellow] {w}")
        console.print(f"dataset written to [bold]{out}[/bold] (manifest: {out / 'manifest.json'})")
