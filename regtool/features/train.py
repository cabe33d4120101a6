"""Training the U-Net for segmentation on views rendered on the fly (`regtool train-unet`).

Training views show the category's TRAINING meshes only (never the test meshes); they are
rendered by spawned worker processes (`views.BatchStream`) while torch trains in the main
process. Two fixed, seeded sets are rendered once: validation views of the training meshes
(new poses, lights, colours, backgrounds) and views of the TEST meshes, which the network never
sees in training, plain and cluttered (over photos held back from training, with occluders);
all are scored by intersection-over-union after every `val_every` steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regtool.config import RenderConfig, UNetConfig
from regtool.errors import ArtifactError, DatasetError
from regtool.features.unet import (
    ARCH_KEYS,
    UNet,
    checkpoint_bytes,
    model_from_checkpoint,
    read_checkpoint,
    unet_from_config,
)
from regtool.features.views import (
    BatchStream,
    ViewMesh,
    ViewSampler,
    load_backgrounds,
    render_fixed_set,
)
from regtool.io import read_json, sha256_file, write_atomic, write_bytes_atomic, write_json_atomic

Progress = Callable[[int, int, dict[str, float]], None]
WARMUP_FRACTION = 0.05
STAMP_KEY = "regtool-checkpoint"  # PNG text chunk naming the checkpoint a side PNG belongs to


def side_paths(out: Path) -> dict[str, Path]:
    """Return the files written next to the checkpoint `out`: metrics JSON, curve PNG and
    sample-prediction PNG (e.g. unet.json, unet_curve.png, unet_samples.png)."""
    out = Path(out)
    return {"json": out.with_suffix(".json"),
            "curve": out.with_name(f"{out.stem}_curve.png"),
            "samples": out.with_name(f"{out.stem}_samples.png")}


def side_file_stamp(path: Path) -> str | None:
    """Return the checkpoint stamp `"step=<n> sha256=<hex>"` a side file of `side_paths`
    carries (JSON: its `checkpoint_stamp` field; PNG: its `regtool-checkpoint` text chunk), or
    None if the file is missing, unreadable or unstamped."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            stamp = json.loads(path.read_text(encoding="utf-8")).get("checkpoint_stamp")
        else:
            from PIL import Image

            with Image.open(path) as img:
                # typed ImageFile; only PngImageFile has .text (others: AttributeError)
                stamp = img.text.get(STAMP_KEY)  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError, SyntaxError):
        return None
    return stamp if isinstance(stamp, str) else None


def checkpoint_stamp(step: int, sha256: str) -> str:
    """Return the stamp that ties a side file to the checkpoint of `step` with file hash
    `sha256` (hex)."""
    return f"step={int(step)} sha256={sha256}"


def write_checkpoint_and_report(out: Path, data: bytes, report_format: str,
                                report: dict[str, Any]) -> tuple[str, dict[str, Path]]:
    """Write the checkpoint bytes `data` (of `report["step"]`) to `out`, then its metrics JSON
    (`report` with `format`, the checkpoint's name and stamp); return (the stamp, `side_paths`)
    for the PNGs the caller writes next. The checkpoint is the unit and written first; the side
    files follow, stamped with its step and file hash, so a kill in between leaves them
    detectably stale (`stale_side_files`), never silently mixed."""
    stamp = checkpoint_stamp(report["step"], hashlib.sha256(data).hexdigest())
    write_bytes_atomic(out, data)
    paths = side_paths(out)
    write_json_atomic(paths["json"], {"format": report_format, "checkpoint": out.name,
                                      "checkpoint_stamp": stamp, **report})
    return stamp, paths


def run_steps(start: int, config: Any, train_step: Callable[[int], float],
              evaluate: Callable[[], dict[str, Any]], keys: tuple[str, ...],
              curve: dict[str, list], save: Callable[[int, dict[str, Any]], None],
              progress: Progress | None) -> None:
    """Run the training steps `start` .. `config.steps` - 1 (`train_step(step)` sets the
    learning rate of `learning_rate(step, config)`' schedule itself and returns the loss): every
    `config.val_every` steps, at every checkpoint (`config.checkpoint_every`) and at the last,
    append the mean loss since the previous evaluation and `evaluate()`'s `keys` to `curve`
    ("step", "loss", "val_step", keys), then `save(step, result)` at checkpoints and the last
    step; `progress(done, total, {"loss", the first two keys' latest values})` after every
    step. A run resumed at its end evaluates and saves once."""
    latest = {k: float("nan") for k in keys[:2]}
    window: list[float] = []
    res: dict[str, Any] | None = None
    for step in range(start, config.steps):
        loss = train_step(step)
        window.append(loss)
        done = step + 1
        last = done == config.steps
        if done % config.val_every == 0 or last or done % config.checkpoint_every == 0:
            curve["step"].append(done)
            curve["loss"].append(float(np.mean(window)))
            window = []
            res = evaluate()
            curve["val_step"].append(done)
            for k in keys:
                curve[k].append(res[k])
            latest = {k: res[k] for k in keys[:2]}
            if done % config.checkpoint_every == 0 or last:
                save(done, res)
        if progress:
            progress(done, config.steps, {"loss": loss, **latest})
    if res is None:  # nothing left to train (resumed a finished run): re-evaluate and report
        save(start, evaluate())


def stale_side_files(out: Path) -> list[Path]:
    """Return the side files of checkpoint `out` that do not belong to it: missing, or stamped
    for another checkpoint (a run killed between writing the checkpoint and its side files
    leaves them one checkpoint behind). The checkpoint is authoritative; [] when all match."""
    out = Path(out)
    blob = read_checkpoint(out)
    stamp = checkpoint_stamp(blob["step"], sha256_file(out))
    return [p for p in side_paths(out).values() if side_file_stamp(p) != stamp]


def read_report(out: Path) -> dict[str, Any]:
    """Return the metrics report `<stem>.json` of checkpoint `out` (verified, see
    `read_checkpoint`); ArtifactError if it is missing or stale (from another checkpoint)."""
    stale = stale_side_files(out)
    path = side_paths(out)["json"]
    if path in stale:
        raise ArtifactError(f"{path} does not belong to the checkpoint {out} (missing, or left "
                            f"by an interrupted run); train again or --resume to rewrite it")
    return read_json(path, "metrics report", ArtifactError)


def remove_leftover_temps(out: Path) -> list[Path]:
    """Delete the temporary files (`io.write_atomic`'s `.<stem>.XXXXXXXX.tmp<suffix>`) that a
    killed run left beside checkpoint `out` and its side files; return the deleted paths."""
    out = Path(out)
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for target in (out, *side_paths(out).values()):
        pattern = re.compile(re.escape(f".{target.stem}.") + r"[a-z0-9_]{8}"
                             + re.escape(f".tmp{target.suffix}"))
        for entry in out.parent.iterdir():
            if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def resolve_categories(dataset_root: Path, categories: str | list[str]) -> list[str]:
    """Return the category names: "all" -> every category of the dataset's manifest."""
    from regtool.data.manifest import read_manifest

    root = Path(dataset_root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if isinstance(categories, str):
        if categories == "all":
            return list(read_manifest(root).categories)
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    if not categories:
        raise DatasetError("no category given")
    return list(categories)


def view_mesh(mesh, label: int, name: str, scale: float = 1.0) -> ViewMesh:
    """Return the ViewMesh of a trimesh mesh with its vertices x `scale` (mesh units -> metres),
    with its vertex normals computed once here rather than for every rendered view."""
    return ViewMesh(np.asarray(mesh.vertices, np.float64) * scale,
                    np.asarray(mesh.faces, np.int64), label, name,
                    np.asarray(mesh.vertex_normals, np.float64))


def load_distractor_meshes(dataset_root: Path, categories: list[str], split: str = "train"
                           ) -> list[ViewMesh]:
    """Return the meshes (`split` "train" or "test") of the dataset's categories NOT in
    `categories`, labelled 0 (background): the distractor objects of cluttered views."""
    from regtool.data.dataset import load_category
    from regtool.units import UNITS_TO_METRES

    others = [c for c in resolve_categories(dataset_root, "all") if c not in categories]
    out: list = []
    for name in others:
        data = load_category(Path(dataset_root), name, with_test=True, min_train=1)
        scale = UNITS_TO_METRES[data.units]
        meshes = (data.train.items() if split == "train"
                  else [(inst.name, inst.mesh) for inst in data.test])
        out.extend(view_mesh(mesh, 0, mesh_name, scale) for mesh_name, mesh in meshes)
    return out


def clutter_sampler(config: UNetConfig, render: RenderConfig,
                    backgrounds: tuple[np.ndarray, ...], distractors: list[ViewMesh]
                    ) -> ViewSampler:
    """Return the training views' sampler: `config`'s size, distance jitter and clutter
    probabilities, the render section's field of view and distance, the user's `backgrounds`
    and the built-in training photos (`config.builtin_photos`)."""
    return ViewSampler(config.image_width, config.image_height, render.fov_y_deg,
                       render.distance, config.distance_jitter, backgrounds,
                       clutter=config.clutter, distractors=config.distractors,
                       occluders=config.occluders, photometric=config.photometric,
                       supersample=config.supersample,
                       photo_split="train" if config.builtin_photos else "",
                       distractor_meshes=tuple(distractors))


def held_back_samplers(sampler: ViewSampler, distractors: list[ViewMesh]
                       ) -> dict[str, ViewSampler]:
    """Return the samplers of train-unet's cluttered test views: "photo" (every background a
    crop of a held-back built-in photo, test meshes of the other categories as distractors in
    half of the views, no occluder, no camera effects) and "occluded" (the same with an
    occluder over 20 % of the object in every view)."""
    import dataclasses

    photo = dataclasses.replace(sampler, backgrounds=(), clutter=1.0, photo_share=1.0,
                                photo_split="held_back", photometric=0.0, occluders=0.0,
                                supersample=0.0,
                                distractors=0.5 if distractors else 0.0,
                                distractor_meshes=tuple(distractors))
    return {"photo": photo,
            "occluded": dataclasses.replace(photo, occluders=1.0, occlusion=(0.2, 0.2))}


def load_view_meshes(dataset_root: Path, categories: list[str]
                     ) -> tuple[list[ViewMesh], list[ViewMesh]]:
    """Return (training meshes, test meshes) of `categories` as ViewMesh with 1-based labels in
    the order of `categories`; DatasetError if a category is missing or has no training mesh."""
    from regtool.data.dataset import load_category
    from regtool.units import UNITS_TO_METRES

    train, test = [], []
    for label, name in enumerate(categories, start=1):
        data = load_category(Path(dataset_root), name, with_test=True, min_train=1)
        scale = UNITS_TO_METRES[data.units]  # views are rendered in metres
        for mesh_name, mesh in data.train.items():
            train.append(view_mesh(mesh, label, mesh_name, scale))
        for inst in data.test:
            test.append(view_mesh(inst.mesh, label, inst.name, scale))
    return train, test


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return (B, 3, H, W) float32 in [0, 1] from (B, H, W, 3) uint8 images."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def iou_scores(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Return the per-image IoU (N,) float64 of label maps pred, truth (N, H, W) int (0 =
    background): |pred == truth, truth > 0| / |pred > 0 or truth > 0| (a pixel with the
    wrong category counts as a miss); 1.0 when both are empty."""
    inter = ((pred == truth) & (truth > 0)).sum(axis=(1, 2)).astype(np.float64)
    union = ((pred > 0) | (truth > 0)).sum(axis=(1, 2)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)


@torch.no_grad()
def predict_labels(model: UNet, images: np.ndarray, device: torch.device | str,
                   batch: int = 16) -> np.ndarray:
    """Return the argmax label maps (N, H, W) uint8 of images (N, H, W, 3) uint8 (eval mode)."""
    was_training = model.training
    model.eval()
    out = [model(to_tensor(images[i:i + batch], device)).argmax(1).to(torch.uint8).cpu().numpy()
           for i in range(0, len(images), batch)]
    model.train(was_training)
    return np.concatenate(out)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Return cross-entropy + soft Dice (over the foreground classes) of logits (B, K, H, W)
    against labels (B, H, W) int64; the Dice term keeps small objects from being ignored."""
    ce = F.cross_entropy(logits, labels)
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return ce + dice.mean()


def learning_rate(step: int, config: UNetConfig) -> float:
    """Return the learning rate at `step`: linear warm-up over the first 5 % of the steps, then
    cosine decay to 2 % of `config.learning_rate`."""
    warm = max(1, int(WARMUP_FRACTION * config.steps))
    if step < warm:
        return config.learning_rate * (step + 1) / warm
    t = (step - warm) / max(1, config.steps - warm)
    return config.learning_rate * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _threads(config: UNetConfig) -> int:
    """Return the torch thread count: `train_threads`, or when 0 the cores left after the
    render workers, keeping at least one core for rendering (inline rendering runs llvmpipe's
    own threads). Measured on a shared 2-core CPU: 2 torch threads next to rendering made a
    step 3.6x slower than 1 thread (2.53 vs 0.70 s)."""
    if config.train_threads > 0:
        return config.train_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - max(1, config.render_workers))


def _write_curve_png(path: Path, curve: dict[str, list], title: str, stamp: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    a.plot(curve["step"], curve["loss"], lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("training loss (CE + Dice), mean per interval")
    a.set_yscale("log")
    b.plot(curve["val_step"], curve["val_iou"], "o-", label="validation views (train meshes)")
    b.plot(curve["val_step"], curve["test_iou"], "s-", label="test meshes (never trained on)")
    for key, label in (("photo_test_iou", "test meshes, held-back photos"),
                       ("occluded_test_iou", "test meshes, held-back photos, 20 % occluded")):
        if key in curve:
            b.plot(curve["val_step"], curve[key], ".--", label=label)
    b.set_xlabel("step")
    b.set_ylabel("mean IoU per image")
    b.set_ylim(0, 1)
    b.grid(alpha=0.3)
    b.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", metadata={STAMP_KEY: stamp}))
    plt.close(fig)


def _write_samples_png(path: Path, sets: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                       stamp: str, per_set: int = 4) -> None:
    """Rows: image, ground truth, prediction; columns: the first views of each set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(name, images[i], truth[i], pred[i], iou_scores(pred[i:i + 1], truth[i:i + 1])[0])
            for name, images, truth, pred in sets for i in range(min(per_set, len(images)))]
    fig, axes = plt.subplots(3, len(cols), figsize=(1.9 * len(cols), 4.6), dpi=90,
                             squeeze=False)
    for j, (name, img, gt, pr, iou) in enumerate(cols):
        k = max(1, int(max(gt.max(), pr.max())))
        for i, (im, kw) in enumerate([(img, {}), (gt, {"vmin": 0, "vmax": k}),
                                      (pr, {"vmin": 0, "vmax": k})]):
            axes[i, j].imshow(im, **kw)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[0, j].set_title(name, fontsize=7)
        axes[2, j].set_xlabel(f"IoU {iou:.3f}", fontsize=7)
    for i, label in enumerate(["image", "label", "prediction"]):
        axes[i, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", metadata={STAMP_KEY: stamp}))
    plt.close(fig)


def resume_checkpoint(out: Path, config: Any, compare_keys: tuple[str, ...],
                      trained_on: tuple[str, Any], **read_kwargs: Any) -> dict[str, Any]:
    """Return the checkpoint at `out` to resume from (`read_checkpoint(out, **read_kwargs)`);
    ArtifactError if there is none, if its architecture differs from `config`'s `compare_keys`, or
    if its meta entry trained_on[0] is not trained_on[1] (the categories it learnt)."""
    if not Path(out).is_file():
        raise ArtifactError(f"--resume: no checkpoint at {out} to resume from")
    blob = read_checkpoint(out, **read_kwargs)
    meta = blob["meta"]
    want = {k: getattr(config, k) for k in compare_keys}
    have = {k: meta["arch"].get(k) for k in compare_keys}
    if want != have:
        raise ArtifactError(f"--resume: checkpoint {out} has architecture {have}, the config "
                            f"asks for {want}")
    key, value = trained_on
    if meta.get(key) != value:
        raise ArtifactError(f"--resume: checkpoint {out} was trained on {meta.get(key)!r}, "
                            f"not {value!r}")
    return blob


def train_unet(dataset_root: Path, categories: str | list[str], config: UNetConfig,
               render: RenderConfig, out: Path, device: torch.device | str = "cpu",
               seed: int = 0, resume: bool = False, progress: Progress | None = None,
               backgrounds_dir: Path | None = None) -> dict[str, Any]:
    """Train a U-Net to segment `categories` (a name, a list, or "all") and write it to `out`.

    Writes (atomically, every `checkpoint_every` steps and at the end): the checkpoint `out`
    (weights, optimiser state, step, config, metrics; see `unet.save_checkpoint`), and next to
    it `<stem>.json` (metadata + metrics + curve), `<stem>_curve.png` and `<stem>_samples.png`,
    each stamped with the checkpoint's step and file hash (`stale_side_files`, `read_report`).
    An interruption leaves the last checkpoint written intact (its side files may lag behind
    it, detectably); `resume=True` continues from it (same batches as an uninterrupted run:
    batch i depends only on (seed, i)). Temporary files a killed run left at `out` are deleted.

    `progress(step, total, info)` is called after every step with info keys `loss` (running
    mean), `val_iou`, `test_iou` (latest evaluation, NaN before the first).

    Returns the metrics dict: `val_iou` / `test_iou` (mean per-image IoU of the final model on
    the fixed validation views of the training meshes / on views of the test meshes),
    `*_pooled` (IoU of all pixels together), `test_iou_per_mesh`, `photo_test_iou` /
    `occluded_test_iou` (views of the test meshes over held-back built-in photos with
    distractors, and the same with 20 % of the object occluded; `held_back_samplers`), `step`,
    timings (seconds):
    `train_seconds` (this run), `render_seconds` (worker rendering of the consumed batches),
    `seconds_per_step`, and `threads`, `render_workers`.
    """
    t_start = time.perf_counter()
    device = torch.device(device)
    out = Path(out)
    cats = resolve_categories(dataset_root, categories)
    train_meshes, test_meshes = load_view_meshes(dataset_root, cats)
    backgrounds = load_backgrounds(backgrounds_dir)
    remove_leftover_temps(out)
    blob = resume_checkpoint(out, config, ARCH_KEYS, ("categories", cats)) if resume else None
    distractors = (load_distractor_meshes(dataset_root, cats)
                   if config.distractors > 0 else [])
    sampler = clutter_sampler(config, render, backgrounds, distractors)

    start = int(blob["step"]) if blob else 0
    threads_before = torch.get_num_threads()
    threads = _threads(config)
    torch.set_num_threads(threads)
    stream = BatchStream(train_meshes, sampler, seed, config.batch_size, start=start,
                         workers=config.render_workers) if start < config.steps else None
    try:
        return _train_loop(dataset_root, cats, config, render, out, device, seed, blob, sampler,
                           train_meshes, test_meshes, stream, progress, t_start, threads)
    finally:
        if stream is not None:
            stream.close()
        torch.set_num_threads(threads_before)


def _train_loop(dataset_root, cats, config, render, out, device, seed, blob, sampler,
                train_meshes, test_meshes, stream, progress, t_start, threads) -> dict[str, Any]:
    # Fixed sets: validation views of the training meshes and views of the test meshes, from
    # seeds disjoint from the training stream's (which uses SeedSequence([seed, i])).
    val_images, val_labels = render_fixed_set(train_meshes, sampler, seed + 1_000_003,
                                              config.val_views)
    test_images, test_labels = (render_fixed_set(test_meshes, sampler, seed + 2_000_003,
                                                 config.val_views)
                                if test_meshes else (None, None))
    # Cluttered views of the test meshes: over the held-back built-in photos, and with an
    # occluder over 20 % of the object (labels: the visible object).
    clutter_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if test_meshes:
        other_test = load_distractor_meshes(dataset_root, cats, "test")
        for k, (name, held) in enumerate(held_back_samplers(sampler, other_test).items()):
            clutter_sets[name] = render_fixed_set(test_meshes, held, seed + 3_000_003 + k,
                                                  config.val_views)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = unet_from_config(config, n_classes=1 + len(cats))
    if blob:
        model = model_from_checkpoint(blob, str(out))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    if blob and blob.get("optimizer"):
        optimizer.load_state_dict(blob["optimizer"])
    old = blob["meta"] if blob else {}
    curve = old.get("curve") or {"step": [], "loss": [], "val_step": [], "val_iou": [],
                                 "test_iou": []}
    for name in clutter_sets:  # curves of checkpoints written before these sets existed
        curve.setdefault(f"{name}_test_iou", [float("nan")] * len(curve["val_step"]))
    prior_seconds = float(old.get("metrics", {}).get("train_seconds_total", 0.0))
    start = int(blob["step"]) if blob else 0
    meta = {"categories": cats, "image_size": [config.image_width, config.image_height],
            "n_classes": 1 + len(cats), "labels": {c: i for i, c in enumerate(cats, 1)},
            "config": dataclasses.asdict(config), "render": dataclasses.asdict(render),
            "seed": seed, "dataset": str(dataset_root),
            "train_meshes": [m.name for m in train_meshes],
            "test_meshes": [m.name for m in test_meshes]}
    metrics: dict[str, Any] = dict(old.get("metrics", {}))

    def evaluate() -> dict[str, Any]:
        val_pred = predict_labels(model, val_images, device)
        res = {"val_iou": float(iou_scores(val_pred, val_labels).mean()),
               "val_iou_pooled": _pooled(val_pred, val_labels), "val_pred": val_pred}
        if test_images is not None and test_labels is not None:  # both or neither
            test_pred = predict_labels(model, test_images, device)
            per = iou_scores(test_pred, test_labels)
            res.update(test_iou=float(per.mean()), test_iou_pooled=_pooled(test_pred, test_labels),
                       test_iou_per_mesh={m.name: float(per[i::len(test_meshes)].mean())
                                          for i, m in enumerate(test_meshes)},
                       test_pred=test_pred)
        else:
            res.update(test_iou=float("nan"), test_iou_pooled=float("nan"),
                       test_iou_per_mesh={}, test_pred=None)
        for name, (images, labels) in clutter_sets.items():
            pred = predict_labels(model, images, device)
            res[f"{name}_test_iou"] = float(iou_scores(pred, labels).mean())
            res[f"{name}_test_pred"] = pred
        return res

    def save(step: int, res: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - t_start
        done = max(1, step - start)
        metrics.update({k: v for k, v in res.items() if not k.endswith("_pred")})
        metrics.update(step=step, train_seconds=elapsed,
                       train_seconds_total=prior_seconds + elapsed,
                       seconds_per_step=elapsed / done,
                       render_seconds=stream.render_seconds if stream else 0.0,
                       threads=threads, render_workers=config.render_workers,
                       device=str(device), val_views=len(val_images),
                       test_views=0 if test_images is None else len(test_images))
        full = {**meta, "metrics": metrics, "curve": curve}
        stamp, paths = write_checkpoint_and_report(
            out, checkpoint_bytes(model, full, optimizer.state_dict(), None, step),
            "regtool-unet-report", {**full, "arch": model.arch(), "step": step})
        _write_curve_png(paths["curve"], curve, f"U-Net {'+'.join(cats)}: step {step}, "
                         f"val IoU {metrics['val_iou']:.3f}, test IoU {metrics['test_iou']:.3f}",
                         stamp)
        sets = [("val", val_images, val_labels, res["val_pred"])]
        if res["test_pred"] is not None:
            assert test_images is not None and test_labels is not None  # test_pred from them
            sets.append(("test mesh", test_images, test_labels, res["test_pred"]))
        for name, (images, labels) in clutter_sets.items():
            sets.append((f"{name} test", images, labels, res[f"{name}_test_pred"]))
        _write_samples_png(paths["samples"], sets, stamp)

    def train_step(step: int) -> float:
        images, labels = stream.next()
        x = to_tensor(images, device)
        y = torch.from_numpy(labels).to(device).long()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss = segmentation_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    run_steps(start, config, train_step, evaluate,
              ("val_iou", "test_iou", *[f"{name}_test_iou" for name in clutter_sets]),
              curve, save, progress)
    return {k: v for k, v in metrics.items()}


def _pooled(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = ((pred == truth) & (truth > 0)).sum()
    union = ((pred > 0) | (truth > 0)).sum()
    return float(inter / union) if union else 1.0
