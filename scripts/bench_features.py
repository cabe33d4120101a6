#!/usr/bin/env python
"""Benchmark the U-Net: forward + backward time per image at 160x120 and 320x240.

For the quick-profile and the default architecture, on CPU (and CUDA when available):
* `train`: forward + backward with respect to the weights (one training step without the
  optimiser), batch 8, per image;
* `feature_loss`: FeatureLoss("features") forward + backward with respect to the rendered image
  (what one registration iteration costs), batch 1, observed features cached;
* `forward` (the reference measured in the same run): inference only, batch 1.
Ratios are given against `forward`. Writes `features.json` and `features.md` into --out.

Usage: .venv/bin/python scripts/bench_features.py [--out bench_results] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from regtool.config import load_config
from regtool.features.compare import FeatureLoss
from regtool.features.unet import unet_from_config

SIZES = [(160, 120), (320, 240)]


def _timed(fn, repeats: int, device: torch.device) -> float:
    """Return the median seconds of `fn()` over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(arch_name: str, config, device: torch.device, width: int, height: int,
          repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    model = unet_from_config(config, n_classes=2).to(device)
    batch = 8
    x8 = torch.rand(batch, 3, height, width, generator=gen).to(device)
    y8 = torch.randint(0, 2, (batch, height, width), generator=gen).to(device)

    def train_step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x8), y8).backward()

    model.train()
    t_train = _timed(train_step, repeats, device) / batch
    model.eval()
    x1 = torch.rand(1, 3, height, width, generator=gen).to(device)

    def forward():
        with torch.no_grad():
            model(x1)

    t_fwd = _timed(forward, repeats, device)
    loss = FeatureLoss(model, "features")
    observed = torch.rand(1, 3, height, width, generator=gen).to(device)

    def feature_loss():
        r = x1.clone().requires_grad_(True)
        loss(r, observed).backward()

    t_loss = _timed(feature_loss, repeats, device)
    return {"arch": arch_name, "base_channels": config.base_channels, "depth": config.depth,
            "feature_channels": config.feature_channels, "device": str(device),
            "width": width, "height": height, "threads": torch.get_num_threads(),
            "forward_s": t_fwd, "train_fwd_bwd_per_image_s": t_train,
            "feature_loss_fwd_bwd_s": t_loss, "train_ratio": t_train / t_fwd,
            "feature_loss_ratio": t_loss / t_fwd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch default; 1 by default because two "
                             "threads on a shared 2-core CPU stall badly)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    archs = {"quick": load_config(root / "configs" / "quick.toml").unet,
             "default": load_config(None).unet}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                       else [])
    rows = []
    for device in devices:
        for name, cfg in archs.items():
            for w, h in SIZES:
                row = bench(name, cfg, device, w, h, args.repeats)
                rows.append(row)
                print(f"{device} {name} {w}x{h}: forward {row['forward_s'] * 1e3:.1f} ms, "
                      f"train fwd+bwd {row['train_fwd_bwd_per_image_s'] * 1e3:.1f} ms/image, "
                      f"FeatureLoss fwd+bwd {row['feature_loss_fwd_bwd_s'] * 1e3:.1f} ms",
                      flush=True)
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": __import__("os").cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "repeats": args.repeats}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "features.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2)
                                            + "\n")
    lines = ["# U-Net forward + backward time", "",
             f"torch {info['torch']}, {info['cpu_count']} CPUs, CUDA: {info['cuda']}; median of "
             f"{args.repeats} runs. Reference: `forward` (inference, batch 1) in the same run.",
             "",
             "| device | arch (base/depth/features) | size | forward ms | train fwd+bwd ms/image "
             "(batch 8) | ratio | FeatureLoss fwd+bwd ms (batch 1) | ratio |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['device']} | {r['arch']} ({r['base_channels']}/{r['depth']}/"
                     f"{r['feature_channels']}) | {r['width']}x{r['height']} | "
                     f"{r['forward_s'] * 1e3:.1f} | {r['train_fwd_bwd_per_image_s'] * 1e3:.1f} | "
                     f"{r['train_ratio']:.2f} | {r['feature_loss_fwd_bwd_s'] * 1e3:.1f} | "
                     f"{r['feature_loss_ratio']:.2f} |")
    (args.out / "features.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'features.json'} and {args.out / 'features.md'}")


if __name__ == "__main__":
    main()
