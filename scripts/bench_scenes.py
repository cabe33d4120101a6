"""Registration error over photos, occluded and at several image sizes (issue 17's must-shows).

Per category and test instance: the evaluation's observation (`evaluation.run`: the same seeded
pose, colour and background as `regtool evaluate`), registered with the known pose (and
`--noise-draws` pose-noise draws, joint mode) over the plain rendered background, over crops of
the held-back built-in photos, with `--occlusion` of the object covered, and rendered at each
`--sizes` (same field of view; the background drawn at the first size, upsampled to the largest
and area-averaged to each: the same scene at every size; brought to the U-Net's scale by
`rescale.network_view`). Reports
the Table 1 error (mean distance of the instance's evaluation points to the nearest deformed
vertex, mm) and the segmentation IoU of the U-Net on the registered view. No 3D references but
the undeformed canonical: it is a quick check, not `regtool evaluate`.

    .venv/bin/python scripts/bench_scenes.py --dataset D --category bottle \
        --shapespace 'A/{category}/shapespace.npz' --unet 'B/{category}/unet.pt' \
        --scenes plain,builtin --occlusion 0,0.2 --sizes 160x120 --out runs/bench/bottle.json
    .venv/bin/python scripts/bench_scenes.py table known_mm runs/bench/bottle.json [MORE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def run_instance(args, category: str, index: int, cfg, space, unet, meta, device) -> list[dict]:
    from regtool.data.dataset import load_category
    from regtool.evaluation.run import (
        _stats,
        instance_rng,
        observe_instance_shaded,
        perturb,
        pose_noise,
        reference_seeds,
        stage_observation,
        stage_rng,
    )
    from regtool.features.compare import FeatureLoss
    from regtool.geometry.camera import CameraIntrinsics
    from regtool.registration.pipeline import (
        at_network_scale,
        make_observation,
        run_registration,
    )
    from regtool.render.clutter import builtin_photos
    from regtool.units import UNITS_TO_METRES

    data = load_category(Path(args.dataset), category)
    test = data.test[index]
    scale = UNITS_TO_METRES[data.units]
    to_mm = scale * 1000.0
    photos = {n: p for n, p in builtin_photos("held_back")}
    scenes = []
    for s in args.scenes.split(","):
        scenes += list(photos) if s == "builtin" else [s]
    loss = FeatureLoss(unet, cfg.register.loss)
    canonical = _stats(test.eval_points, space.canonical_vertices)["mean"] * to_mm
    rows = []
    sizes = [(int(w), int(h)) for w, h in (s.split("x") for s in args.sizes.split(","))]
    largest = max(sizes, key=lambda wh: wh[0] * wh[1])
    for w, h in sizes:
        size = f"{w}x{h}"
        camera = CameraIntrinsics.from_fov(w, h, cfg.render.fov_y_deg)
        rng = instance_rng(args.seed, category, index)
        reference_seeds(rng)
        pose, shaded, plain = observe_instance_shaded(rng, test.mesh, scale, camera,
                                                      cfg.render.distance, sizes[0],
                                                      scene_size=largest)
        noises = [pose_noise(rng, cfg.evaluate.pose_noise_xy, cfg.evaluate.pose_noise_deg)
                  for _ in range(args.noise_draws)]
        for scene in scenes:
            for occ in (float(x) for x in args.occlusion.split(",")):
                photo = photos.get(scene)
                name = scene if photo is not None else ""
                if photo is None and occ == 0:
                    image, visible = shaded.rgb, shaded.alpha >= 0.5
                else:
                    image, visible = stage_observation(
                        stage_rng(args.seed, category, index, name, occ), shaded, plain,
                        photo, occ)
                row = {"category": category, "instance": test.name, "scene": scene,
                       "occlusion": occ, "size": size, "canonical_mm": canonical}
                starts = [(f"noise{k}", perturb(pose, n), True) for k, n in enumerate(noises)]
                if not args.no_known:
                    starts.insert(0, ("known", pose, False))
                for label, start, joint in starts:
                    t0 = time.perf_counter()
                    nv = at_network_scale(image, camera, start, space, meta, cfg, visible)
                    obs = make_observation(nv.image, nv.camera, start, loss,
                                           cfg.register.mask_dilation)
                    seg = iou(obs.mask, nv.mask)
                    result = run_registration(space, unet, [obs], cfg, device, joint=joint)
                    err = _stats(test.eval_points, result.vertices)["mean"] * to_mm
                    row[f"{label}_mm"] = err
                    row[f"{label}_iou"] = seg
                    row[f"{label}_s"] = time.perf_counter() - t0
                    row["warnings"] = list(nv.warnings)
                if args.noise_draws:
                    row["noise_mm"] = float(np.mean([row[f"noise{k}_mm"]
                                                     for k in range(args.noise_draws)]))
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                  for k, v in row.items()}), flush=True)
                rows.append(row)
    return rows


def summarise(paths: list[str], key: str) -> str:
    """Return a Markdown table of `key` (e.g. known_mm, noise_mm, known_iou) per instance
    (rows) and scene / occlusion / size (columns) from bench JSON files (one column group per
    file), with a mean row."""
    cols: dict[tuple, dict[str, float]] = {}
    for path in paths:
        tag = Path(path).stem
        for r in json.loads(Path(path).read_text())["rows"]:
            if key not in r:
                continue
            col = (tag, r["scene"], r["occlusion"], r["size"])
            cols.setdefault(col, {})[f"{r['category']}/{r['instance']}"] = r[key]
    names = sorted({n for c in cols.values() for n in c})
    head = ["instance"] + [f"{t} {s}" + (f" occ {o:g}" if o else "") + (
        f" {z}" if z != "160x120" else "") for t, s, o, z in cols]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(cols)]
    for n in names + ["mean"]:
        cells = []
        for c in cols.values():
            v = float(np.mean(list(c.values()))) if n == "mean" else c.get(n)
            cells.append("" if v is None else f"{v:.2f}" if "mm" in key else f"{v:.3f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "table":  # table KEY FILE...
        print(summarise(sys.argv[3:], sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--category", required=True, help="comma-separated")
    ap.add_argument("--shapespace", required=True, help="'{category}' is replaced")
    ap.add_argument("--unet", required=True, help="'{category}' is replaced")
    ap.add_argument("--scenes", default="plain,builtin", help="plain, builtin (the held-back "
                    "photos) or photo names, comma-separated")
    ap.add_argument("--occlusion", default="0", help="fractions, comma-separated")
    ap.add_argument("--sizes", default="160x120", help="WxH, comma-separated")
    ap.add_argument("--noise-draws", type=int, default=0)
    ap.add_argument("--no-known", action="store_true", help="only the pose-noise draws")
    ap.add_argument("--weighting", default=None, help="override register.weighting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from regtool.config import load_config
    from regtool.data.manifest import read_manifest
    from regtool.registration.pipeline import load_models

    torch.set_num_threads(1)
    overrides = {"register": {"weighting": args.weighting}} if args.weighting else None
    cfg = load_config(Path(args.config) if args.config else None, overrides)
    device = torch.device("cpu")
    rows = []
    for category in args.category.split(","):
        space, unet, meta = load_models(Path(args.shapespace.replace("{category}", category)),
                                        Path(args.unet.replace("{category}", category)), device)
        for index in range(len(read_manifest(Path(args.dataset)).category(category).test)):
            rows += run_instance(args, category, index, cfg, space, unet, meta, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
