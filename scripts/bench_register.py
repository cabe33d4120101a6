#!/usr/bin/env python
"""Benchmark one registration (known pose and joint) with the defaults (the CPU profile) and
the gpu profile.

For each profile: build a shape space of the category (or load --shapespace), take the U-Net
architecture of the profile (the trained weights of --unet when its architecture is the
profile's; timings do not depend on the weights, so an untrained network of the same
architecture is used otherwise), render an
observation of a test instance and register it. Reports the wall time per registration split
into render (forward), features (U-Net + loss), backward (autograd incl. the renderer's
backward) and optimiser, the seconds per iteration, and as the reference measured in the same
run the time of one pyrender forward of the same mesh at the same size (ratio = registration /
reference). Writes register.json and register.md into --out.

Usage: .venv/bin/python scripts/bench_register.py [--dataset DIR] [--category bottle]
       [--unet F] [--out bench_results] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from regtool.config import MakeDatasetConfig, load_config
from regtool.data.dataset import load_category
from regtool.evaluation.run import known_pose, observation_camera
from regtool.features.compare import FeatureLoss
from regtool.features.unet import load_unet, unet_from_config
from regtool.registration.pipeline import make_observation, run_registration
from regtool.render.shading import Material, random_background, render_shaded
from regtool.shapespace.build import build_shapespace

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("default", "gpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=None)
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--unet", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_results"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch default; 1 by default: on a shared 2-core "
                         "CPU two threads stall each other)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tmp = Path(tempfile.mkdtemp(prefix="bench_register_"))
    dataset = args.dataset
    if dataset is None:
        from regtool.data.generate import make_dataset

        dataset = tmp / "dataset"
        make_dataset(dataset, MakeDatasetConfig(categories=(args.category,),
                                                contact_sheet=False), seed=0)
    data = load_category(dataset, args.category)
    test = data.test[0]
    rows = []
    for profile in PROFILES:
        cfg = load_config(profile=None if profile == "default" else profile)
        cfg = replace(cfg, register=replace(cfg.register, gif=False,
                                            plateau_patience=10 ** 6))  # run every iteration
        space, _ = build_shapespace(dataset, args.category, load_config(
            ROOT / "configs" / "quick.toml").shapespace, seed=0)
        unet = unet_from_config(cfg.unet, n_classes=2).eval()
        trained = False
        if args.unet is not None:
            loaded, _ = load_unet(args.unet)
            if all(loaded.arch()[k] == unet.arch()[k]
                   for k in ("base_channels", "depth", "feature_channels")):
                unet, trained = loaded, True
        camera = observation_camera(cfg)
        rng = np.random.default_rng(0)
        pose = known_pose(rng, cfg.render.distance)
        shaded = render_shaded(test.mesh.vertices, test.mesh.faces, pose, camera,
                               material=Material((0.8, 0.2, 0.2)),
                               background=random_background(rng, camera.height, camera.width))
        # Reference: one plain pyrender forward of the canonical at the same size.
        ref = []
        for _ in range(5):
            t0 = time.perf_counter()
            render_shaded(space.canonical_vertices, space.faces, pose, camera)
            ref.append(time.perf_counter() - t0)
        reference = statistics.median(ref)
        loss = FeatureLoss(unet, cfg.register.loss)
        obs = make_observation(shaded.rgb, camera, pose, loss, cfg.register.mask_dilation,
                               mask=shaded.mask)
        for joint in (False, True):
            runs = []
            for _ in range(args.repeats):
                result = run_registration(space, unet, [obs], cfg, torch.device("cpu"),
                                          joint=joint)
                runs.append(result)
            total = statistics.median(r.timings["total"] for r in runs)
            split = {k: statistics.median(r.timings[k] for r in runs)
                     for k in ("render", "features", "backward", "optimiser")}
            iterations = len(runs[0].history)
            rows.append({"profile": profile, "size": f"{camera.width}x{camera.height}",
                         "mode": "joint" if joint else "known pose", "iterations": iterations,
                         "total_s": total, **{f"{k}_s": v for k, v in split.items()},
                         "per_iteration_s": total / max(iterations, 1),
                         "reference_pyrender_forward_s": reference,
                         "ratio_to_reference": total / reference,
                         "faces": int(len(space.faces)),
                         "unet": unet.arch(), "unet_trained": trained})
            print(json.dumps(rows[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    env = {"machine": platform.machine(), "processor": platform.processor(),
           "unet_checkpoint": str(args.unet) if args.unet else None,
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    (args.out / "register.json").write_text(json.dumps({"environment": env, "rows": rows},
                                                       indent=2) + "\n")
    lines = ["| profile | size | mode | iterations | total s | render s | features s | "
             "backward s | optimiser s | s/iteration | ratio to one pyrender forward |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['profile']} | {r['size']} | {r['mode']} | {r['iterations']} | "
                     f"{r['total_s']:.2f} | {r['render_s']:.2f} | {r['features_s']:.2f} | "
                     f"{r['backward_s']:.2f} | {r['optimiser_s']:.3f} | "
                     f"{r['per_iteration_s']:.3f} | {r['ratio_to_reference']:.0f} |")
    (args.out / "register.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
