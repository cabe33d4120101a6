"""Benchmark: regtool's non-rigid CPD (torch) against pycpd's DeformableRegistration.

Same inputs (points on an ellipsoid and a smoothly deformed, independently sampled copy,
normalised to the template's centroid and RMS radius so both libraries solve the identical
problem), same parameters (beta, lambda = pycpd's alpha, w) and the same fixed number of EM
iterations (tolerance 0). Every (library, size) runs in a fresh subprocess, so the peak memory
(ru_maxrss; torch's allocations are invisible to tracemalloc) belongs to that run alone.

Writes BENCH_OUT/bench_cpd.json and BENCH_OUT/bench_cpd.md.

    .venv/bin/python scripts/bench_cpd.py [--sizes 1000 2000 5000] [--large 20000]
        [--iterations 30] [--large-iterations 20] [--out bench_results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BETA, LAMBDA, W = 2.0, 2.0, 0.0


def make_problem(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (Y, X), both (size, 3): points on an ellipsoid and a deformed, independently
    sampled copy; normalised so that Y has centroid 0 and RMS radius 1."""
    rng = np.random.default_rng(seed)

    def ellipsoid(n):
        d = rng.normal(size=(n, 3))
        return d / np.linalg.norm(d, axis=1, keepdims=True) * np.array([1.0, 0.6, 0.4])

    y, x = ellipsoid(size), ellipsoid(size)
    x = x + 0.15 * np.stack([np.sin(2 * x[:, 1]), x[:, 0] * x[:, 2], np.cos(3 * x[:, 0]) - 1], 1)
    c = y.mean(0)
    s = np.sqrt(((y - c) ** 2).sum(1).mean())
    return (y - c) / s, (x - c) / s


def worker(method: str, size: int, iterations: int, seed: int, out: Path) -> None:
    """Run one registration, save the moved template to out/<method>_<size>.npy, print JSON."""
    import torch  # noqa: F401  (import cost and baseline memory outside the measurement)

    y, x = make_problem(size, seed)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if method == "pycpd":
        from pycpd import DeformableRegistration

        reg = DeformableRegistration(X=x, Y=y, alpha=LAMBDA, beta=BETA, w=W, tolerance=0.0,
                                     max_iterations=iterations)
        ty, _ = reg.register()
        sigma2, its, path = float(reg.sigma2), reg.iteration, "full"
    else:
        from regtool.shapespace.cpd import nonrigid_cpd

        res = nonrigid_cpd(y, x, beta=BETA, lambda_=LAMBDA, w=W, tolerance=0.0,
                           max_iterations=iterations)
        ty, sigma2, its = res.transformed.numpy(), res.sigma2, res.iterations
        path = f"low-rank {res.lowrank}" if res.lowrank else "full"
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    np.save(out / f"{method}_{size}.npy", ty)
    print(json.dumps({"method": method, "size": size, "iterations": its, "path": path,
                      "wall_s": wall, "cpu_s": (r1.ru_utime + r1.ru_stime)
                      - (r0.ru_utime + r0.ru_stime),
                      "peak_rss_mb": r1.ru_maxrss / 1024.0,
                      "peak_rss_increase_mb": (r1.ru_maxrss - base_rss) / 1024.0,
                      "sigma2": sigma2}))


def run_child(method: str, size: int, iterations: int, seed: int, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(size), str(iterations), str(seed),
           str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"method": method, "size": size, "error": (proc.stderr.strip().splitlines()
                                                          or ["failed"])[-1],
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000])
    ap.add_argument("--large", type=int, nargs="*", default=[20000])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--large-iterations", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    ap.add_argument("--worker", nargs=5, metavar=("METHOD", "SIZE", "ITER", "SEED", "DIR"))
    args = ap.parse_args()
    if args.worker:
        m, s, i, seed, d = args.worker
        worker(m, int(s), int(i), int(seed), Path(d))
        return

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            row = {"size": size}
            for method in ("regtool", "pycpd"):
                print(f"M = N = {size}: {method} ...", flush=True)
                row[method] = run_child(method, size, args.iterations, args.seed, tmp)
            if "error" not in row["regtool"] and "error" not in row["pycpd"]:
                a, b = (np.load(tmp / f"{m}_{size}.npy") for m in ("regtool", "pycpd"))
                y, _ = make_problem(size, args.seed)
                row["max_abs_diff"] = float(np.abs(a - b).max())
                row["mean_displacement"] = float(np.linalg.norm(b - y, axis=1).mean())
                row["speedup_wall"] = row["pycpd"]["wall_s"] / row["regtool"]["wall_s"]
                row["speedup_cpu"] = row["pycpd"]["cpu_s"] / row["regtool"]["cpu_s"]
            rows.append(row)
        for size in args.large:
            print(f"M = N = {size}: regtool only ...", flush=True)
            rows.append({"size": size, "regtool": run_child("regtool", size,
                                                            args.large_iterations, args.seed,
                                                            tmp)})
    result = {"benchmark": "non-rigid CPD, regtool (torch) vs pycpd",
              "parameters": {"beta": BETA, "lambda": LAMBDA, "w": W, "tolerance": 0.0,
                             "iterations": args.iterations,
                             "large_iterations": args.large_iterations, "seed": args.seed,
                             "units": "normalised (template centroid 0, RMS radius 1)"},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "load_average_at_end": os.getloadavg()},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_cpd.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Non-rigid CPD: regtool vs pycpd", "",
             f"beta {BETA}, lambda {LAMBDA}, w {W}, fixed iterations ({args.iterations}; "
             f"{args.large_iterations} for the regtool-only sizes), float64, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average at end "
             f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}.", "",
             "| M = N | regtool path | regtool wall s | regtool CPU s | regtool peak RSS MB | "
             "pycpd wall s | pycpd CPU s | pycpd peak RSS MB | speed-up (wall) | "
             "speed-up (CPU) | max abs diff | mean displacement |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        a, b = r.get("regtool", {}), r.get("pycpd", {})
        lines.append(
            f"| {r['size']} | {a.get('path', a.get('error', '-'))} | {f(a.get('wall_s'))} | "
            f"{f(a.get('cpu_s'))} | {f(a.get('peak_rss_mb'), '.0f')} | {f(b.get('wall_s'))} | "
            f"{f(b.get('cpu_s'))} | {f(b.get('peak_rss_mb'), '.0f')} | "
            f"{f(r.get('speedup_wall'))} | {f(r.get('speedup_cpu'))} | "
            f"{f(r.get('max_abs_diff'), '.2e')} | {f(r.get('mean_displacement'), '.3f')} |")
    (args.out / "bench_cpd.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
