"""`regtool evaluate`: the paper's Table 1 on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from regtool.cli.app import (
    ConfigOption,
    RayAddressOption,
    app,
    command_config,
    console,
    options,
    progress_bar,
    reported_errors,
)


def _artifact(template: str, category: str, what: str) -> Path:
    from regtool.errors import ArtifactError

    path = Path(template.replace("{category}", category))
    if not path.is_file():
        raise ArtifactError(f"{what} for category '{category}' not found: {path}")
    return path


def scene_title(spec: str, photos, occlusion: float) -> str:
    """Return the report title's note on the observations' backgrounds and occlusion ('' for
    plain, unoccluded observations)."""
    parts = []
    if photos:
        what = "held-back built-in photos" if spec == "builtin" else f"photos in {spec}"
        parts.append(f"over {what} ({', '.join(n for n, _ in photos)})")
    if occlusion > 0:
        parts.append(f"{100 * occlusion:.0f} % of the object occluded")
    return f" ({'; '.join(parts)})" if parts else ""


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    dataset: Path = typer.Option(..., "--dataset", "-d", help="Dataset folder (with manifest)."),
    category: str = typer.Option(..., "--category", help="Category name, comma-separated "
                                 "names, or 'all'."),
    shapespace: str = typer.Option("runs/{category}/shapespace.npz", "--shapespace",
                                   help="Shape space; '{category}' is replaced per category."),
    unet: str = typer.Option("runs/{category}/unet.pt", "--unet",
                             help="U-Net checkpoint; '{category}' is replaced per category."),
    correspondence: Optional[str] = typer.Option(
        None, "--correspondence", help="Correspondence network per category ('{category}' "
        "replaced): adds the columns of the learned backward (known pose, pose noise)."),
    out: Path = typer.Option(Path("runs/evaluation"), "--out", "-o", help="Report folder."),
    noise_draws: Optional[int] = typer.Option(None, "--noise-draws", help="Override "
                                              "evaluate.noise_draws."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel processes "
                                          "(0: one per core)."),
    views: Optional[int] = typer.Option(None, "--views", help="Override evaluate.views: "
                                        "also register N views of each instance jointly."),
    executor: str = typer.Option("local", "--executor", help="local (processes on this "
                                 "machine) or ray (Ray actors, one per worker)."),
    ray_address: Optional[str] = RayAddressOption,
    backgrounds: Optional[str] = typer.Option(None, "--backgrounds", help="Composite the "
                                              "observations onto crops of photos: 'builtin' "
                                              "(the held-back built-in photos) or a folder; "
                                              "one row per instance and photo."),
    occlusion: Optional[float] = typer.Option(None, "--occlusion", help="Cover this fraction "
                                              "of the object's pixels with an occluder."),
    rotation_noise_deg: Optional[float] = typer.Option(
        None, "--rotation-noise-deg", help="Pose noise: rotation uniform in +/-this about each "
        "axis, degrees (evaluate.pose_noise_deg; the paper's 15)."),
    translation_noise_m: Optional[float] = typer.Option(
        None, "--translation-noise-m", help="Pose noise: x/y translation uniform in +/-this, "
        "metres (evaluate.pose_noise_xy; the paper's 0.05)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Table 1: register every test instance (known pose, pose noise) and compare with the 3D
    references; writes report.md, results.csv, results.json and errors.png."""
    import platform
    import time

    from regtool.config import config_to_dict
    from regtool.data.manifest import verify_dataset
    from regtool.device import resolve_device
    from regtool.evaluation.report import evaluation_columns, write_report
    from regtool.evaluation.run import evaluate, evaluation_backgrounds
    from regtool.io import check_output_dir
    from regtool.registration.pipeline import load_models
    from regtool.registration.result import software_versions

    with reported_errors(ctx):
        cfg = command_config(ctx, config, {"evaluate": {
            "noise_draws": noise_draws, "workers": workers, "views": views,
            "backgrounds": backgrounds, "occlusion": occlusion,
            "pose_noise_deg": rotation_noise_deg, "pose_noise_xy": translation_noise_m}})
        photos = evaluation_backgrounds(cfg.evaluate.backgrounds)
        device = resolve_device(options(ctx).device)
        check_output_dir(out)  # created only when the report is written
        manifest = verify_dataset(dataset)
        names = list(manifest.categories) if category == "all" else \
            [c.strip() for c in category.split(",") if c.strip()]
        for c in names:
            manifest.category(c)
        spaces = {c: _artifact(shapespace, c, "shape space") for c in names}
        unets = {c: _artifact(unet, c, "U-Net checkpoint") for c in names}
        from regtool.batch.executor import check_executor

        check_executor(executor, ray_address)
        corrs = None if correspondence is None else \
            {c: _artifact(correspondence, c, "correspondence network") for c in names}
        for c in names:  # fail fast on corrupted or mismatched artifacts
            models = load_models(spaces[c], unets[c], device)
            if corrs is not None:
                from regtool.registration.pipeline import load_correspondence_for

                load_correspondence_for(models[0], corrs[c], device)
        total = sum(len(manifest.category(c).test) for c in names) * max(1, len(photos or []))
        t0 = time.perf_counter()
        with progress_bar("evaluate", total) as advance:
            rows = evaluate(dataset, names, spaces, unets, cfg, options(ctx).seed, str(device),
                            progress=lambda name: advance(1, name), executor=executor,
                            address=ray_address, backgrounds=photos, correspondences=corrs)
        from regtool.render.context import get_context

        env = {**software_versions(get_context().info()["renderer"]),
               "machine": platform.machine(), "device": str(device), "seed": options(ctx).seed}
        columns = evaluation_columns(cfg.evaluate.views, cfg.register.refine != "none",
                                     cfg.evaluate.noise_draws > 0, learned=corrs is not None)
        paths = write_report(out, rows, columns=columns, dataset_units=manifest.units,
                             environment=env,
                             config=config_to_dict(cfg),
                             timings={"total_seconds": time.perf_counter() - t0},
                             title=f"regtool evaluation: {', '.join(names)}"
                             + scene_title(cfg.evaluate.backgrounds, photos,
                                           cfg.evaluate.occlusion),
                             extra={"dataset": str(dataset), "shapespaces": {c: str(p) for c, p
                                                                             in spaces.items()},
                                    "backgrounds": [n for n, _ in photos or []],
                                    "occlusion": cfg.evaluate.occlusion,
                                    "unets": {c: str(p) for c, p in unets.items()},
                                    **({} if corrs is None else {"correspondences": {
                                        c: str(p) for c, p in corrs.items()}})})
        console.print((out / "report.md").read_text())
        console.print(f"report: [bold]{paths.get('report.md', out / 'report.md')}[/bold]")
