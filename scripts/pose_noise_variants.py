#!/usr/bin/env python
"""Compare registration settings under the pose-noise protocol of `regtool evaluate`.

For each test instance the observation, the true pose and the pose-noise draws are exactly
those of `regtool evaluate --seed SEED` (the same seeded draws, `evaluation.run`); each variant
registers every draw in joint mode with its overrides of the `[register]` config section and
records the Table 1 error (mean distance of the instance's evaluation points to the nearest
vertex of the deformed canonical, mm), the best loss and the start and final pose errors.
Besides the register keys a variant may set `noise_scale` (multiplies the drawn noise: 0 starts
joint mode at the true pose) and `joint` (false: shape only, at the noisy start pose). With
`--correspondence PATTERN` ({category} replaced) a variant may set `"backward": "learned"`.

Writes pose_noise_variants.json (every draw) and pose_noise_variants.md (mean error per
instance and variant, and the mean over instances) into --out.

Usage: .venv/bin/python scripts/pose_noise_variants.py --run runs/full
       [--variants '{"default": {}, "true-pose start": {"noise_scale": 0}}']
       [--instances bottle:0,drill:1] [--draws 3] [--seed 0] [--workers 2] [--out DIR]
--run holds dataset/ and per category {category}/shapespace.npz and {category}/unet.pt (the
layout of the README's full-evaluation commands).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from regtool.config import load_config
from regtool.data.dataset import load_category
from regtool.data.manifest import read_manifest
from regtool.evaluation.metrics import distance_stats, pose_error
from regtool.evaluation.run import (
    category_symmetry,
    instance_rng,
    observation_camera,
    observe_instance,
    perturb,
    pose_noise,
    reference_seeds,
)
from regtool.features.compare import FeatureLoss
from regtool.registration.pipeline import (
    load_correspondence_for,
    load_models,
    make_observation,
    run_registration,
)
from regtool.units import UNITS_TO_METRES

SCRIPT_KEYS = ("noise_scale", "joint")


def run_instance(run_dir: str, category: str, index: int, variants: dict, draws: int, seed: int,
                 config_path: str | None, correspondence: str | None = None) -> list[dict]:
    """Return one record per (variant, draw) of one test instance."""
    torch.set_num_threads(1)
    cfg = load_config(Path(config_path) if config_path else None)
    run = Path(run_dir)
    data = load_category(run / "dataset", category)
    test = data.test[index]
    space, unet, meta = load_models(run / category / "shapespace.npz",
                                    run / category / "unet.pt", torch.device("cpu"))
    scale = UNITS_TO_METRES[data.units]
    symmetry = category_symmetry(data)  # as `regtool evaluate`
    rng = instance_rng(seed, category, index)
    reference_seeds(rng)  # drawn by the 3D references first in `regtool evaluate`
    camera = observation_camera(cfg, meta.get("image_size"))
    true_pose, observed = observe_instance(rng, test.mesh, scale, camera, cfg.render.distance)
    noises = [pose_noise(rng, cfg.evaluate.pose_noise_xy, cfg.evaluate.pose_noise_deg)
              for _ in range(draws)]
    feature_loss = FeatureLoss(unet, cfg.register.loss)
    network = None
    if correspondence:
        network = load_correspondence_for(space, Path(correspondence.format(category=category)),
                                          torch.device("cpu"))
    records = []
    for name, overrides in variants.items():
        register_keys = {k: v for k, v in overrides.items() if k not in SCRIPT_KEYS}
        variant_cfg = replace(cfg, register=replace(cfg.register, **register_keys))
        for k, noise in enumerate(noises):
            start = perturb(true_pose, noise * float(overrides.get("noise_scale", 1.0)))
            obs = make_observation(observed, camera, start, feature_loss,
                                   variant_cfg.register.mask_dilation)
            result = run_registration(space, unet, [obs], variant_cfg, torch.device("cpu"),
                                      joint=bool(overrides.get("joint", True)),
                                      correspondence=network)
            before = pose_error(start, true_pose, symmetry)
            after = pose_error(result.poses[0], true_pose, symmetry)
            records.append({
                "variant": name, "category": category, "instance": test.name, "draw": k,
                "error_mm": distance_stats(test.eval_points, result.vertices)["mean"] * scale
                * 1e3,
                "best_loss": result.best_loss, "seconds": result.timings["total"],
                "start_rotation_deg": before["rotation_deg"],
                "rotation_deg": after["rotation_deg"],
                "start_translation_mm": before["translation"] * 1e3,
                "translation_mm": after["translation"] * 1e3})
    return records


def markdown(records: list[dict], variants: list[str]) -> str:
    """Return the Markdown table: mean error (mm) over the draws per instance and variant."""
    instances = list(dict.fromkeys(r["instance"] for r in records))

    def mean(v, inst=None):
        vals = [r["error_mm"] for r in records
                if r["variant"] == v and (inst is None or r["instance"] == inst)]
        return float(np.mean(vals))

    per_instance = {(v, i): mean(v, i) for v in variants for i in instances}
    lines = ["| Instance | " + " | ".join(variants) + " |",
             "| --- |" + " ---: |" * len(variants)]
    for i in instances:
        lines.append(f"| {i} | " + " | ".join(f"{per_instance[v, i]:.2f}" for v in variants)
                     + " |")
    lines.append("| **mean over instances** | " + " | ".join(
        f"**{np.mean([per_instance[v, i] for i in instances]):.2f}**" for v in variants) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--variants", default='{"default": {}}',
                        help="JSON object: variant name -> [register] overrides")
    parser.add_argument("--instances", default="",
                        help="category:index,... (default: every test instance)")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default=None, help="TOML config (default: the defaults)")
    parser.add_argument("--correspondence", default=None,
                        help="correspondence network path pattern with {category}")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    try:
        variants = json.loads(args.variants)
        if not isinstance(variants, dict) or not all(isinstance(v, dict)
                                                     for v in variants.values()):
            raise ValueError("expected an object of objects")
        if args.instances:
            jobs = [(c, int(i)) for c, i in (item.split(":") for item in
                                             args.instances.split(","))]
        else:
            manifest = read_manifest(args.run / "dataset")
            jobs = [(c, i) for c in manifest.categories
                    for i, _ in enumerate(manifest.category(c).test)]
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with cf.ProcessPoolExecutor(max(1, min(args.workers, len(jobs))),
                                mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(run_instance, str(args.run), c, i, variants, args.draws,
                               args.seed, args.config, args.correspondence) for c, i in jobs]
        records = [r for f in futures for r in f.result()]
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(records, list(variants))
    (args.out / "pose_noise_variants.json").write_text(json.dumps(
        {"run": str(args.run), "seed": args.seed, "draws": args.draws, "variants": variants,
         "records": records}, indent=2))
    (args.out / "pose_noise_variants.md").write_text(
        f"# Pose-noise variants ({args.run}, seed {args.seed}, {args.draws} draws)\n\n"
        "Mean error (mm) of the Table 1 metric over the draws.\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
