#!/usr/bin/env python
"""Benchmark one known-pose registration with the residual refinement, from one and from three
views, beside its latent-only stage (issue 15).

Renders the observation(s) of a test instance as `regtool evaluate --views N` does (the first
view at the seeded known pose, the others around it), registers them with the config's
register section and `refine = "residual"`, and reports per number of views the wall seconds
of the latent stage (centring, descents, code search), of the refinement and in total, the
seconds per latent and per refinement iteration, and the error of both stages (mean distance
of the instance's evaluation points to the nearest vertex, mm). Writes refine.json into --out.

Usage: .venv/bin/python scripts/bench_refine.py --dataset DIR --shapespace F --unet F
       [--category bottle] [--instance 0] [--views 1,3] [--repeats 1] [--config F]
       [--out bench_results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from regtool.config import load_config
from regtool.data.dataset import load_category
from regtool.evaluation.metrics import distance_stats
from regtool.evaluation.run import (
    instance_rng,
    observation_camera,
    observe_instance,
    reference_seeds,
    render_observation,
    rig_poses,
    views_rng,
)
from regtool.features.compare import FeatureLoss
from regtool.registration.pipeline import load_models, make_observation, run_registration
from regtool.units import UNITS_TO_METRES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--shapespace", type=Path, required=True)
    ap.add_argument("--unet", type=Path, required=True)
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--instance", type=int, default=0)
    ap.add_argument("--views", default="1,3")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = load_config(args.config)
    cfg = replace(cfg, register=replace(cfg.register, refine="residual", gif=False))
    data = load_category(args.dataset, args.category)
    test = data.test[args.instance]
    space, unet, meta = load_models(args.shapespace, args.unet, device)
    scale = UNITS_TO_METRES[data.units]
    rng = instance_rng(args.seed, args.category, args.instance)
    reference_seeds(rng)  # the same draws as evaluate: the observation comes third
    camera = observation_camera(cfg, meta.get("image_size"))
    pose, observed = observe_instance(rng, test.mesh, scale, camera, cfg.render.distance)
    loss = FeatureLoss(unet, cfg.register.loss)
    rows = []
    for n in [int(v) for v in args.views.split(",")]:
        poses, images = [pose], [observed]
        if n > 1:
            vrng = views_rng(args.seed, args.category, args.instance)
            poses = rig_poses(vrng, pose, n, cfg.render.distance)
            images += [render_observation(vrng, test.mesh, scale, camera, p) for p in poses[1:]]
        obs = [make_observation(im, camera, p, loss, cfg.register.mask_dilation)
               for im, p in zip(images, poses)]
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = run_registration(space, unet, obs, cfg, device)
            wall = time.perf_counter() - t0
            r = result.refinement  # type: ignore[attr-defined]
            latent_its = sum(len(d["losses"]) for d in result.descents[:-1])
            runs.append({
                "wall_s": wall, "latent_s": result.timings["total"] - r["seconds"],
                "refine_s": r["seconds"], "latent_evaluations": latent_its,
                "refine_evaluations": len(r["losses"]),
                "latent_error_mm": 1000 * scale * distance_stats(
                    test.eval_points, result.latent_vertices)["mean"],  # type: ignore
                "refined_error_mm": 1000 * scale * distance_stats(
                    test.eval_points, result.vertices)["mean"],
                "residual_max_mm": 1000 * scale * r["residual_max"]})
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        med["latent_s_per_evaluation"] = med["latent_s"] / max(1, med["latent_evaluations"])
        med["refine_s_per_evaluation"] = med["refine_s"] / max(1, med["refine_evaluations"])
        rows.append({"views": n, "median": med, "runs": runs})
        print(f"{n} view(s): latent {med['latent_s']:.1f} s, refinement {med['refine_s']:.1f} s, "
              f"total {med['wall_s']:.1f} s; error {med['latent_error_mm']:.2f} -> "
              f"{med['refined_error_mm']:.2f} mm")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"category": args.category, "instance": test.name, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "processor": platform.processor(), "torch": torch.__version__,
              "register": {k: v for k, v in vars(cfg.register).items()
                           if not k.startswith("_")},
              "rows": rows}
    path = args.out / "refine.json"
    path.write_text(json.dumps(record, indent=2, default=lambda o: list(o)
                               if isinstance(o, tuple) else str(o)), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
