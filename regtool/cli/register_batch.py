"""`regtool register-batch`: register every job of a JSONL file, locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from regtool.cli.app import (
    ConfigOption,
    RayAddressOption,
    app,
    console,
    options,
    progress_bar,
    reported_errors,
    warn,
)


@app.command("register-batch")
def register_batch_command(
    ctx: typer.Context,
    jobs: Path = typer.Option(..., "--jobs", help="Jobs file (JSONL): one registration per "
                              "line (id, image(s), camera(s), pose(s), optional mask, "
                              "overrides, track); format in docs/distributed.md."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: one sub-folder per job "
                             "and summary.csv."),
    shapespace: Optional[Path] = typer.Option(None, "--shapespace", help="Shape space (.npz) "
                                              "of jobs that name none."),
    unet: Optional[Path] = typer.Option(None, "--unet", help="U-Net checkpoint (.pt) of jobs "
                                        "that name none."),
    executor: str = typer.Option("local", "--executor", help="local (process pool on this "
                                 "machine) or ray."),
    ray_address: Optional[str] = RayAddressOption,
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel workers (default: "
                                          "one per core of this machine)."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Register every job of a jobs file: each job's outputs in OUT/<job id>/ as `register`
    writes them, OUT/summary.csv (job, status, loss, seconds, error); a failed job is recorded
    and the others go on; finished jobs are skipped when run again. Exit code 1 if a job
    failed."""
    import os

    from regtool.batch.executor import check_executor, opened
    from regtool.batch.jobs import read_jobs
    from regtool.batch.run import run_batch
    from regtool.device import resolve_device
    from regtool.errors import ConfigError
    from regtool.io import check_output_dir

    with reported_errors(ctx):
        opts = options(ctx)
        device = str(resolve_device(opts.device))
        check_output_dir(out)
        check_executor(executor, ray_address)
        batch = read_jobs(jobs, shapespace=shapespace, unet=unet, config_path=config,
                          profile=opts.config_profile())
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise ConfigError(f"--workers must be at least 1, got {n}")
        with progress_bar("register-batch", None, rate_unit="jobs") as advance, \
                opened(executor, n, address=ray_address, threads=1) as pool:
            summary = run_batch(
                batch, out, pool, device,
                progress=lambda job, row: advance(1, f"{job} {row['status']}"),
                on_total=lambda total: advance(0, total=total))
        for job_id, error in summary.failures:
            warn(f"job {job_id} failed: {error}")
        ok = sum(r["status"] == "ok" for r in summary.rows)
        console.print(f"{len(summary.rows)} jobs: {ok} ok, {summary.failed} failed, "
                      f"{summary.skipped} finished earlier (skipped); summary: "
                      f"[bold]{summary.path}[/bold]")
        if summary.failed:
            raise typer.Exit(1)
