#!/usr/bin/env python
"""Choose the residual refinement's defaults by measurement (docs/refinement.md).

For every test instance of the given categories, as `regtool evaluate` observes it (seeded
known pose; with --views N also the N-view rig), run the latent registration once per number
of views, then the refinement (`refine.refine`) from that same latent result with every
setting of the grid, and record the mean error of the evaluation points (mm) of the latent
result and of each refined one, and the refinement's seconds. Writes tune.json and tune.md
(per setting: mean ratio refined / latent over the instances, worst category, seconds).

Usage: .venv/bin/python scripts/tune_refine.py --dataset DIR --artifacts DIR
       [--categories bottle,spray] [--views 1,3] [--beta 0.15,0.3,0.6] [--lambda 0.1,1,10]
       [--lr 0.01] [--iterations 30] [--mahalanobis 0] [--out tune_results]
(--artifacts holds <category>/shapespace.npz and <category>/unet.pt.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import regtool.registration.refine as refine_module
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


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def latent_problem(space, unet, obs, cfg, device):
    """Return (problem, latent result) of the registration of `obs` (refine skipped): the
    refinement stage is intercepted once to keep what it was given."""
    captured = {}
    real = refine_module.refine

    def capture(problem, result, config, dev):
        captured.update(problem=problem, result=result)
        return result

    refine_module.refine = capture
    try:
        run_registration(space, unet, obs, replace(cfg, register=replace(
            cfg.register, refine="residual")), device)
    finally:
        refine_module.refine = real
    return captured["problem"], captured["result"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--categories", default="bottle")
    ap.add_argument("--views", default="1")
    ap.add_argument("--beta", default="0.15,0.3,0.6")
    ap.add_argument("--lambda", dest="lambdas", default="0.1,1,10")
    ap.add_argument("--lr", default="0.01")
    ap.add_argument("--iterations", default="30")
    ap.add_argument("--mahalanobis", default="0")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("tune_results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    cfg = load_config(args.config)
    cfg = replace(cfg, register=replace(cfg.register, gif=False))
    grid = list(itertools.product(_floats(args.beta), _floats(args.lambdas), _floats(args.lr),
                                  [int(v) for v in args.iterations.split(",")],
                                  _floats(args.mahalanobis)))
    records = []
    for category in args.categories.split(","):
        data = load_category(args.dataset, category)
        space, unet, meta = load_models(args.artifacts / category / "shapespace.npz",
                                        args.artifacts / category / "unet.pt", device)
        scale = UNITS_TO_METRES[data.units]
        loss = FeatureLoss(unet, cfg.register.loss)
        camera = observation_camera(cfg, meta.get("image_size"))
        for index, test in enumerate(data.test):
            rng = instance_rng(args.seed, category, index)
            reference_seeds(rng)
            pose, observed = observe_instance(rng, test.mesh, scale, camera, cfg.render.distance)
            for n in [int(v) for v in args.views.split(",")]:
                poses, images = [pose], [observed]
                if n > 1:
                    vrng = views_rng(args.seed, category, index)
                    poses = rig_poses(vrng, pose, n, cfg.render.distance)
                    images += [render_observation(vrng, test.mesh, scale, camera, p)
                               for p in poses[1:]]
                obs = [make_observation(im, camera, p, loss, cfg.register.mask_dilation)
                       for im, p in zip(images, poses)]
                problem, latent = latent_problem(space, unet, obs, cfg, device)
                latent_mm = 1000 * scale * distance_stats(test.eval_points,
                                                          latent.vertices)["mean"]
                for beta, lam, lr, its, maha in grid:
                    reg = replace(cfg.register, refine="residual", refine_beta=beta,
                                  refine_lambda=lam, refine_learning_rate=lr,
                                  refine_iterations=its, refine_mahalanobis=maha)
                    t0 = time.perf_counter()
                    refined = refine_module.refine(problem, latent, reg, device)
                    seconds = time.perf_counter() - t0
                    mm = 1000 * scale * distance_stats(test.eval_points,
                                                       refined.vertices)["mean"]
                    r = refined.refinement  # type: ignore[attr-defined]
                    records.append({"category": category, "instance": test.name, "views": n,
                                    "beta": beta, "lambda": lam, "lr": lr, "iterations": its,
                                    "mahalanobis": maha, "latent_mm": latent_mm,
                                    "refined_mm": mm, "seconds": seconds,
                                    "residual_max_mm": 1000 * scale * r["residual_max"],
                                    "loss_ratio": r["refined_loss"] / r["latent_loss"],
                                    "shrinks": r["shrinks"]})
                    print(f"{category}/{test.name} {n}v beta {beta} lambda {lam} lr {lr} "
                          f"it {its} maha {maha}: {latent_mm:.2f} -> {mm:.2f} mm "
                          f"({seconds:.1f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    (args.out / "tune.md").write_text(summary_markdown(records), encoding="utf-8")
    print(summary_markdown(records))


def summary_markdown(records: list[dict]) -> str:
    """Return the Markdown table: per (views, setting) the mean over instances of refined /
    latent error, the worst category's mean ratio, the mean errors and seconds."""
    keys = ("views", "beta", "lambda", "lr", "iterations", "mahalanobis")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    lines = ["| views | beta | lambda | lr | iterations | mahalanobis | latent mm | refined mm "
             "| mean ratio | worst category ratio | s / refinement |",
             "| " + " | ".join(["---:"] * 11) + " |"]
    for key, rs in sorted(groups.items()):
        cats = {}
        for r in rs:
            cats.setdefault(r["category"], []).append(r)
        worst = max(np.mean([r["refined_mm"] for r in c]) / np.mean([r["latent_mm"] for r in c])
                    for c in cats.values())
        lat = np.mean([r["latent_mm"] for r in rs])
        ref = np.mean([r["refined_mm"] for r in rs])
        lines.append("| " + " | ".join(str(k) for k in key) + f" | {lat:.2f} | {ref:.2f} | "
                     f"{ref / lat:.3f} | {worst:.3f} | "
                     f"{np.mean([r['seconds'] for r in rs]):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
