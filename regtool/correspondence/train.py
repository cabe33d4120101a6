"""Training the correspondence network (`regtool train-correspondence`).

Pairs (`pairs.render_pair`) are rendered on the fly from the category's TRAINING meshes; two
fixed, seeded sets are rendered once: validation pairs of the training meshes and pairs of the
TEST meshes (never trained on; their codes are the shape space's latent fit to their evaluation
points). Both are scored by the mean end-point error (pixels, over the valid pixels of each
pair) against the zero field's (the error of predicting no motion at all).

Loss per pair: the robust end-point error sqrt(|pred - true|^2 + 0.01) averaged over the valid
pixels, plus 0.1 x the L1 error of the confidence channel s against log(EPE + 0.5) (detached) on
valid pixels and against log(32) on rendered pixels whose point is hidden in the observation
(so that the weight 1 / (1 + exp(s)^2) of the registration ignores them).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtool.config import CorrespondenceConfig, RenderConfig
from regtool.correspondence.network import (
    ARCH_KEYS,
    CHECKPOINT_FORMAT,
    CorrespondenceNet,
    checkpoint_bytes,
    model_from_checkpoint,
)
from regtool.correspondence.pairs import PairSource, render_pairs, stack_pairs
from regtool.errors import DatasetError
from regtool.features.train import (
    STAMP_KEY,
    learning_rate,
    remove_leftover_temps,
    resume_checkpoint,
    run_steps,
    write_checkpoint_and_report,
)
from regtool.io import write_atomic

Progress = Callable[[int, int, dict[str, float]], None]
HIDDEN_LOG_ERROR = math.log(32.0)


def pair_losses(output: torch.Tensor, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (training loss, per-pair mean EPE (B,) in pixels over valid pixels) of network
    outputs (B, 3, H, W) for a batch of `stack_pairs`."""
    valid = batch["valid"].float()
    hidden = (batch["mask"] & ~batch["valid"]).float()
    diff = output[:, :2] - batch["target"]
    epe = diff.pow(2).sum(1).add(1e-12).sqrt()  # (B, H, W)
    robust = diff.pow(2).sum(1).add(0.01).sqrt()
    n_valid = valid.sum((1, 2)).clamp_min(1.0)
    per_pair = (epe * valid).sum((1, 2)) / n_valid
    s = output[:, 2]
    conf_target = torch.where(batch["valid"], torch.log(epe.detach() + 0.5),
                              torch.full_like(s, HIDDEN_LOG_ERROR))
    conf_w = valid + hidden
    conf = ((s - conf_target).abs() * conf_w).sum((1, 2)) / conf_w.sum((1, 2)).clamp_min(1.0)
    loss = ((robust * valid).sum((1, 2)) / n_valid).mean() + 0.1 * conf.mean()
    return loss, per_pair.detach()


def zero_field_epe(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the per-pair mean end-point error (B,) of the zero field (pixels)."""
    valid = batch["valid"].float()
    return (batch["target"].norm(dim=1) * valid).sum((1, 2)) / valid.sum((1, 2)).clamp_min(1.0)


@torch.no_grad()
def predict(model: CorrespondenceNet, batch: dict[str, torch.Tensor], device,
            chunk: int = 8) -> torch.Tensor:
    """Return the network outputs (B, 3, H, W) on CPU for a batch, in chunks."""
    model.eval()
    outs = []
    for i in range(0, batch["observed"].shape[0], chunk):
        outs.append(model(batch["observed"][i:i + chunk].to(device),
                          batch["rendered"][i:i + chunk].to(device)).cpu())
    return torch.cat(outs)


def load_pair_sources(dataset_root: Path, category: str, shapespace_path: Path,
                      config: CorrespondenceConfig, render: RenderConfig
                      ) -> tuple[PairSource, PairSource, Any]:
    """Return (training-mesh source, test-mesh source, ShapeSpace) of `category`; DatasetError
    if the shape space is of another category or misses a training mesh's code."""
    from regtool.data.dataset import load_category
    from regtool.evaluation.run import category_symmetry
    from regtool.features.train import view_mesh
    from regtool.features.views import ViewSampler
    from regtool.shapespace.fit import fit_points
    from regtool.shapespace.space import ShapeSpace
    from regtool.units import UNITS_TO_METRES

    space = ShapeSpace.load(shapespace_path)
    if space.category != category:
        raise DatasetError(f"the shape space {shapespace_path} is for category "
                           f"'{space.category}', not '{category}'")
    data = load_category(Path(dataset_root), category)
    scale = UNITS_TO_METRES[data.units]
    names = list(space.train_names)
    missing = [n for n in data.train if n not in names]
    if missing:
        raise DatasetError(f"the shape space {shapespace_path} has no code for the training "
                           f"mesh(es) {', '.join(missing)}: build it from this dataset")
    train = tuple(view_mesh(m, 1, n, scale) for n, m in data.train.items())
    codes = np.stack([np.array(space.train_codes)[names.index(n)] for n in data.train])
    test = tuple(view_mesh(t.mesh, 1, t.name, scale) for t in data.test)
    test_codes = np.stack([fit_points(space, t.eval_points).z for t in data.test]) \
        if data.test else np.zeros((0, space.latent_dim))
    symmetry = category_symmetry(data)
    sampler = ViewSampler(config.image_width, config.image_height, render.fov_y_deg,
                          render.distance, config.distance_jitter)
    common: dict[str, Any] = {
        "space": space, "sampler": sampler, "max_rotation_deg": config.max_rotation_deg,
        "max_translation_m": config.max_translation_m, "code_noise": config.code_noise,
        "symmetry_axis": None if symmetry is None else np.asarray(symmetry.axis),
        "symmetry_point": None if symmetry is None else np.asarray(symmetry.point)}
    return (PairSource(meshes=train, codes=codes, **common),
            PairSource(meshes=test, codes=test_codes, **common), space)


def train_correspondence(dataset_root: Path, category: str, shapespace_path: Path,
                         config: CorrespondenceConfig, render: RenderConfig, out: Path,
                         device: torch.device | str = "cpu", seed: int = 0,
                         resume: bool = False, progress: Progress | None = None
                         ) -> dict[str, Any]:
    """Train the correspondence network of `category` and write it to `out`.

    Writes atomically every `checkpoint_every` steps and at the end: the checkpoint `out`
    (weights, optimiser state, step, config, metrics, curve) and next to it `<stem>.json`
    (metrics + curve), `<stem>_curve.png` and `<stem>_samples.png` (observation, true and
    predicted fields as colour wheels), stamped like train-unet's side files. `resume=True`
    continues from `out` (pair batch i depends only on (seed, i)).

    Returns the metrics: `val_epe` / `test_epe` (mean end-point error in pixels of the final
    network on the validation pairs of the training meshes / on pairs of the test meshes),
    `val_zero_epe` / `test_zero_epe` (the zero field's), `test_ratio` = test_epe /
    test_zero_epe, `step`, `train_seconds`, `seconds_per_step`."""
    t_start = time.perf_counter()
    device = torch.device(device)
    out = Path(out)
    train_src, test_src, space = load_pair_sources(dataset_root, category, shapespace_path,
                                                   config, render)
    remove_leftover_temps(out)
    blob = resume_checkpoint(out, config, ARCH_KEYS, ("category", category),
                             fmt=CHECKPOINT_FORMAT, what="correspondence",
                             arch_keys=ARCH_KEYS) if resume else None
    threads_before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        return _train_loop(dataset_root, category, shapespace_path, config, render, out,
                           device, seed, blob, train_src, test_src, progress, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _fixed_set(source: PairSource, seed: int, count: int) -> dict[str, torch.Tensor]:
    return stack_pairs(render_pairs(source, seed, 0, count))


def _train_loop(dataset_root, category, shapespace_path, config, render, out, device, seed,
                blob, train_src, test_src, progress, t_start) -> dict[str, Any]:
    val = _fixed_set(train_src, seed + 1_000_003, config.val_views)
    test = _fixed_set(test_src, seed + 2_000_003, config.val_views) if test_src.meshes else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CorrespondenceNet(config.base_channels, config.depth, config.downsample)
    if blob:
        model = model_from_checkpoint(blob, str(out))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    if blob and blob.get("optimizer"):
        optimizer.load_state_dict(blob["optimizer"])
    old = blob["meta"] if blob else {}
    curve = old.get("curve") or {"step": [], "loss": [], "val_step": [], "val_epe": [],
                                 "test_epe": []}
    prior_seconds = float(old.get("metrics", {}).get("train_seconds_total", 0.0))
    start = int(blob["step"]) if blob else 0
    meta = {"category": category, "image_size": [config.image_width, config.image_height],
            "config": dataclasses.asdict(config), "render": dataclasses.asdict(render),
            "seed": seed, "dataset": str(dataset_root), "shapespace": str(shapespace_path),
            "train_meshes": [m.name for m in train_src.meshes],
            "test_meshes": [m.name for m in test_src.meshes]}
    metrics: dict[str, Any] = dict(old.get("metrics", {}))
    zero = {"val_zero_epe": float(zero_field_epe(val).mean()),
            "test_zero_epe": float(zero_field_epe(test).mean()) if test else float("nan")}

    def evaluate() -> dict[str, Any]:
        res: dict[str, Any] = dict(zero)
        res["val_pred"] = predict(model, val, device)
        res["val_epe"] = float(pair_losses(res["val_pred"], val)[1].mean())
        if test is not None:
            res["test_pred"] = predict(model, test, device)
            res["test_epe"] = float(pair_losses(res["test_pred"], test)[1].mean())
            res["test_ratio"] = res["test_epe"] / max(res["test_zero_epe"], 1e-12)
        else:
            res.update(test_pred=None, test_epe=float("nan"), test_ratio=float("nan"))
        res["val_ratio"] = res["val_epe"] / max(res["val_zero_epe"], 1e-12)
        model.train()
        return res

    def save(step: int, res: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - t_start
        metrics.update({k: v for k, v in res.items() if not k.endswith("_pred")})
        metrics.update(step=step, train_seconds=elapsed,
                       train_seconds_total=prior_seconds + elapsed,
                       seconds_per_step=elapsed / max(1, step - start), device=str(device),
                       threads=torch.get_num_threads(), val_views=int(val["valid"].shape[0]),
                       test_views=0 if test is None else int(test["valid"].shape[0]))
        full = {**meta, "metrics": metrics, "curve": curve}
        stamp, paths = write_checkpoint_and_report(
            out, checkpoint_bytes(model, full, optimizer.state_dict(), None, step),
            "regtool-correspondence-report", {**full, "arch": model.arch(), "step": step})
        _write_curve_png(paths["curve"], curve, metrics, f"correspondence {category}: step "
                         f"{step}", stamp)
        sets = [("val", val, res["val_pred"])]
        if test is not None:
            sets.append(("test mesh", test, res["test_pred"]))
        _write_fields_png(paths["samples"], sets, stamp)

    def train_step(step: int) -> float:
        batch = stack_pairs(render_pairs(train_src, seed, step, config.batch_size,
                                         config.pairs_per_view))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        output = model(batch["observed"].to(device), batch["rendered"].to(device))
        loss, _ = pair_losses(output, {k: v.to(device) for k, v in batch.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    run_steps(start, config, train_step, evaluate, ("val_epe", "test_epe"), curve, save,
              progress)
    return dict(metrics)


def flow_colours(field: np.ndarray, valid: np.ndarray, max_px: float) -> np.ndarray:
    """Return an (H, W, 3) float image of a displacement field (H, W, 2): hue = direction,
    saturation = length / max_px (clipped), white where not `valid`."""
    import matplotlib.colors as mcolors

    angle = (np.arctan2(field[..., 1], field[..., 0]) / (2 * np.pi)) % 1.0
    mag = np.clip(np.linalg.norm(field, axis=-1) / max(max_px, 1e-6), 0.0, 1.0)
    hsv = np.stack([angle, mag, np.ones_like(mag)], -1)
    rgb = mcolors.hsv_to_rgb(hsv)
    rgb[~valid] = 1.0
    return rgb


def _write_fields_png(path: Path, sets: list[tuple[str, dict, torch.Tensor]], stamp: str,
                      per_set: int = 4) -> None:
    """Rows: observation, true field, predicted field (colour wheel, same scale per column);
    columns: the first pairs of each set, titled with their EPE and the zero field's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = []
    for name, batch, pred in sets:
        _, epe = pair_losses(pred, batch)
        zero = zero_field_epe(batch)
        for i in range(min(per_set, batch["observed"].shape[0])):
            cols.append((name, batch["observed"][i, :3].permute(1, 2, 0).numpy(),
                         batch["target"][i].permute(1, 2, 0).numpy(),
                         pred[i, :2].permute(1, 2, 0).numpy(), batch["valid"][i].numpy(),
                         batch["mask"][i].numpy(), float(epe[i]), float(zero[i])))
    fig, axes = plt.subplots(3, len(cols), figsize=(1.9 * len(cols), 4.6), dpi=90,
                             squeeze=False)
    for j, (name, obs, true, pr, valid, mask, epe_j, zero_j) in enumerate(cols):
        scale = float(np.percentile(np.linalg.norm(true[valid], axis=-1), 95)) if valid.any() \
            else 1.0
        for i, im in enumerate([obs, flow_colours(true, valid, scale),
                                flow_colours(pr, mask, scale)]):
            axes[i, j].imshow(np.clip(im, 0, 1))
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(name, fontsize=7)
        axes[2, j].set_xlabel(f"EPE {epe_j:.1f} px (zero {zero_j:.1f})", fontsize=7)
    for i, label in enumerate(["observation", "true field", "predicted"]):
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", metadata={STAMP_KEY: stamp}))
    plt.close(fig)


def _write_curve_png(path: Path, curve: dict[str, list], metrics: dict, title: str,
                     stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    a.plot(curve["step"], curve["loss"], lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("training loss, mean per interval")
    a.set_yscale("log")
    b.plot(curve["val_step"], curve["val_epe"], "o-", label="validation pairs (train meshes)")
    b.plot(curve["val_step"], curve["test_epe"], "s-", label="test meshes (never trained on)")
    for key, style in (("val_zero_epe", ":"), ("test_zero_epe", "--")):
        if math.isfinite(metrics.get(key, float("nan"))):
            b.axhline(metrics[key], ls=style, color="grey", lw=0.8,
                      label=f"zero field ({key.split('_')[0]})")
    b.set_xlabel("step")
    b.set_ylabel("mean end-point error (px)")
    b.set_ylim(bottom=0)
    b.grid(alpha=0.3)
    b.legend(loc="upper right", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", metadata={STAMP_KEY: stamp}))
    plt.close(fig)
