"""Throughput of `register-batch` with 1 and 2 workers (jobs per minute), written as JSON.

Renders `--jobs` observations of the category's test instances (`regtool.batch.demo`), then per
worker count: starts the executor, warms every worker up on one job each (torch import, OpenGL
context, shape space and U-Net loaded once per worker), and times the batch on the warm workers
(torch threads = 1 per worker). Example (the shared artifacts, quick register schedule):

    .venv/bin/python scripts/bench_batch.py --dataset /work/artifacts/full/dataset \
        --shapespace /work/artifacts/full/bottle/shapespace.npz \
        --unet /work/artifacts/full/bottle/unet.pt --jobs 12 --iterations 10 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--shapespace", type=Path, required=True)
    parser.add_argument("--unet", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=12, help="timed jobs per worker count")
    parser.add_argument("--iterations", type=int, default=10, help="register.iterations")
    parser.add_argument("--executor", default="ray", choices=("ray", "local"))
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--out", type=Path, default=Path("bench_batch.json"))
    args = parser.parse_args()

    from regtool.batch.demo import write_demo_jobs
    from regtool.batch.executor import make_executor
    from regtool.batch.jobs import read_jobs
    from regtool.batch.run import run_batch
    from regtool.features.unet import load_unet

    counts = [int(w) for w in args.workers.split(",")]
    meta = load_unet(args.unet, "cpu")[1]
    width, height = meta.get("image_size") or (160, 120)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_batch.") as tmp:
        root = Path(tmp)
        warm_n = max(counts)
        jobs_file = write_demo_jobs(args.dataset, args.category, root / "jobs",
                                    warm_n + args.jobs, width=width, height=height, seed=11)
        cfg = root / "config.toml"
        cfg.write_text(f"[register]\niterations = {args.iterations}\nthreads = 1\n")
        jobs = read_jobs(jobs_file, shapespace=args.shapespace, unet=args.unet, config_path=cfg)
        for workers in counts:
            t0 = time.perf_counter()
            executor = make_executor(args.executor, workers, threads=1)
            if args.executor == "local" and workers == 1:
                import torch

                torch.set_num_threads(1)  # in this process: the inline executor
            try:
                if hasattr(executor, "wait_ready"):  # Ray: every actor up before the warm-up
                    executor.wait_ready(timeout=300)
                run_batch(jobs[:workers], root / f"warm_{workers}", executor)
                start_s = time.perf_counter() - t0
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                summary = run_batch(jobs[warm_n:], root / f"out_{workers}", executor)
                seconds = time.perf_counter() - t0
            finally:
                executor.close()
            ok = sum(r["status"] == "ok" for r in summary.rows)
            results[str(workers)] = {
                "workers": workers, "jobs": len(summary.rows), "ok": ok,
                "seconds": round(seconds, 2), "jobs_per_minute": round(60.0 * ok / seconds, 2),
                "start_and_warm_up_s": round(start_s, 2),
                "mean_job_s": round(sum(float(r["seconds"]) for r in summary.rows)
                                    / len(summary.rows), 2),
                "load_average_1min_at_start": round(load0, 2),
                "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
            print(json.dumps(results[str(workers)]), flush=True)
    report = {"executor": args.executor, "category": args.category,
              "iterations": args.iterations, "image_size": [width, height],
              "cpus": os.cpu_count(), "machine": platform.machine(), "results": results}
    if "1" in results and "2" in results:
        report["speedup_2_vs_1"] = round(results["2"]["jobs_per_minute"]
                                         / results["1"]["jobs_per_minute"], 3)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}))


if __name__ == "__main__":
    main()
