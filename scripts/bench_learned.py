#!/usr/bin/env python
"""Benchmark one joint registration with the learned backward against the analytic one, and
`register.candidates` (all three variants, the lowest loss kept), in the same run, on the same
observation and start pose.

Loads the category's shape space, U-Net and correspondence network (trained files: the learned
field's iterations and early stop depend on the weights), renders an observation of a test
instance at a seeded pose, perturbs the pose by the paper's noise (+/-15 degrees, +/-5 cm x/y,
seeded) and registers it `--repeats` times with each backward. Reports the median wall time per
registration, the field stage's share and iterations (learned) and the final pose errors.
Writes learned.json and learned.md into --out.

Usage: .venv/bin/python scripts/bench_learned.py --dataset DIR --category bottle
       --shapespace F --unet F --correspondence F [--out bench_results] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from regtool.config import load_config
from regtool.data.dataset import load_category
from regtool.evaluation.metrics import pose_error
from regtool.evaluation.run import (
    category_symmetry,
    observation_camera,
    observe_instance,
    perturb,
    pose_noise,
)
from regtool.features.compare import FeatureLoss
from regtool.registration.pipeline import (
    load_correspondence_for,
    load_models,
    make_observation,
    run_registration,
)
from regtool.units import UNITS_TO_METRES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--shapespace", type=Path, required=True)
    ap.add_argument("--unet", type=Path, required=True)
    ap.add_argument("--correspondence", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = load_config()
    cfg = replace(cfg, register=replace(cfg.register, gif=False))
    space, unet, meta = load_models(args.shapespace, args.unet, device)
    corr = load_correspondence_for(space, args.correspondence, device)
    data = load_category(args.dataset, args.category)
    scale = UNITS_TO_METRES[data.units]
    symmetry = category_symmetry(data)
    camera = observation_camera(cfg, meta.get("image_size"))
    rng = np.random.default_rng(args.seed)
    truth, observed = observe_instance(rng, data.test[0].mesh, scale, camera,
                                       cfg.render.distance)
    start = perturb(truth, pose_noise(rng, 0.05, 15.0))
    loss = FeatureLoss(unet, cfg.register.loss)
    obs = make_observation(observed, camera, start, loss, cfg.register.mask_dilation)
    rows = []
    variants = {"analytic": {"backward": "analytic"}, "learned": {"backward": "learned"},
                "candidates": {"candidates": ("grid", "no-grid", "learned")}}
    for backward, overrides in variants.items():
        run_cfg = replace(cfg, register=replace(cfg.register, **overrides))
        runs = [run_registration(space, unet, [obs], run_cfg, device, joint=True,
                                 correspondence=corr) for _ in range(args.repeats)]
        err = pose_error(runs[0].poses[0], truth, symmetry)
        rows.append({
            "backward": backward, "total_s": statistics.median(r.timings["total"] for r in runs),
            "field_s": statistics.median(r.timings.get("field", 0.0) for r in runs),
            "field_iterations": len(runs[0].descents[0].get("field_px", [])),
            "evaluations": sum(len(d.get("losses", [])) for d in runs[0].descents),
            "start_rotation_deg": pose_error(start, truth, symmetry)["rotation_deg"],
            "rotation_deg": err["rotation_deg"], "translation_mm": 1000 * err["translation"]})
        print(json.dumps(rows[-1]))
    analytic, learned, candidates = rows
    speedup = analytic["total_s"] / learned["total_s"]
    cost = candidates["total_s"] / analytic["total_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    env = {"machine": platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "category": args.category,
           "correspondence": str(args.correspondence), "repeats": args.repeats}
    (args.out / "learned.json").write_text(json.dumps(
        {"environment": env, "rows": rows, "analytic_over_learned": speedup,
         "candidates_over_analytic": cost}, indent=2) + "\n")
    lines = ["| backward | total s | field stage s | field iterations | loss evaluations | "
             "rotation start -> final (deg) | translation final (mm) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['backward']} | {r['total_s']:.2f} | {r['field_s']:.2f} | "
                     f"{r['field_iterations']} | {r['evaluations']} | "
                     f"{r['start_rotation_deg']:.1f} -> {r['rotation_deg']:.1f} | "
                     f"{r['translation_mm']:.1f} |")
    lines.append(f"\nanalytic / learned time: {speedup:.2f}x; candidates / analytic: {cost:.2f}x")
    (args.out / "learned.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
