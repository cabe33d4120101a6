"""The U-Net (Ronneberger et al. 2015) used as segmentation network and feature extractor.

`UNet.forward(x)` returns per-class logits; `UNet.features(x)` returns the feature map of the
layer before the 1x1 output convolution (StilllebenDR Sec. 3.3.1: 64 channels in the paper,
`feature_channels` here). Checkpoints hold tensors and plain values only (loaded with
`torch.load(weights_only=True)`); the architecture and metadata travel as a JSON string inside.
Loading verifies the file: every member's zip CRC-32 and the sha256 of the stored tensors, which
the metadata carries (`content_sha256`), so flipped bytes are refused rather than used.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regtool.config import UNetConfig
from regtool.errors import ArtifactError

CHECKPOINT_FORMAT = "regtool-unet"
CHECKPOINT_VERSION = 2  # 2: the metadata carries content_sha256; 1 (no hash) is still read
READ_VERSIONS = (1, 2)
ARCH_KEYS = ("base_channels", "depth", "feature_channels")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm and ReLU; spatial size unchanged."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True))


def encoder_decoder(net: Any, x: torch.Tensor, head: Any = None) -> torch.Tensor:
    """Return the last decoder level's output (B, C, H, W) of `net` (with `depth`, `encoder`,
    `reduce`, `decoder` as `UNet` builds them) for x (B, C_in, H, W): padded (replicate) to a
    multiple of 2**depth, encoded, decoded with skips, passed through `head` if given, cropped
    back to H x W."""
    h, w = x.shape[-2:]
    m = 2 ** net.depth
    ph, pw = (-h) % m, (-w) % m
    y = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    skips = []
    for i, enc in enumerate(net.encoder):
        y = enc(y if i == 0 else F.max_pool2d(y, 2))
        skips.append(y)
    for j, (red, dec) in enumerate(zip(net.reduce, net.decoder)):
        skip = skips[net.depth - 1 - j]
        y = F.interpolate(red(y), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        y = dec(torch.cat([y, skip], dim=1))
    if head is not None:
        y = head(y)
    return y[..., :h, :w]


class UNet(nn.Module):
    """Encoder-decoder with skip connections.

    Level i of the encoder has `base_channels * 2**i` channels (i = 0..depth; `depth` 2x2
    max-pools). The decoder upsamples bilinearly, concatenates the skip and applies a double
    convolution; its last block outputs `feature_channels` channels, the feature map. A 1x1
    convolution maps it to `n_classes` logits (class 0 = background).

    Inputs of any size work: they are padded (replicate) to a multiple of 2**depth and the
    outputs cropped back.
    """

    def __init__(self, n_classes: int = 2, base_channels: int = 16, depth: int = 4,
                 feature_channels: int = 64):
        super().__init__()
        if n_classes < 2:
            raise ValueError("n_classes must be >= 2 (background + at least one category)")
        self.n_classes, self.base_channels = n_classes, base_channels
        self.depth, self.feature_channels = depth, feature_channels
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([_block(3, widths[0])] + [
            _block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.reduce = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(depth, 0, -1):
            out = feature_channels if i == 1 else widths[i - 1]
            self.reduce.append(nn.Conv2d(widths[i], widths[i - 1], 1))
            self.decoder.append(_block(2 * widths[i - 1], out))
        self.head = nn.Conv2d(feature_channels if depth > 0 else widths[0], n_classes, 1)

    def arch(self) -> dict[str, int]:
        """Return the architecture parameters (JSON-ready)."""
        return {"n_classes": self.n_classes, "base_channels": self.base_channels,
                "depth": self.depth, "feature_channels": self.feature_channels}

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"UNet input must have shape (B, 3, H, W), got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the feature map (B, feature_channels, H, W), float, >= 0 (after ReLU), of
        images `x` (B, 3, H, W) float RGB in [0, 1] (rows top to bottom)."""
        self._check(x)
        return encoder_decoder(self, (x - 0.5) / 0.25)  # roughly zero-mean, unit variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, n_classes, H, W) of images `x` (B, 3, H, W) float in [0, 1]."""
        return self.head(self.features(x))


def unet_from_config(config: UNetConfig, n_classes: int) -> UNet:
    """Return an untrained UNet with the architecture of `config`."""
    return UNet(n_classes, config.base_channels, config.depth, config.feature_channels)


def content_sha256(blob: dict[str, Any]) -> str:
    """Return the hex sha256 of a checkpoint's content: the `model`, `optimizer` and `scheduler`
    entries and the `step` (every tensor's key path, dtype, shape and bytes; plain values by
    their JSON text), independent of the zip container."""
    digest = hashlib.sha256()

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}:".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                walk(obj[k], f"{key}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{key}[{i}]")
        else:
            digest.update(f"{key}={json.dumps(obj, default=repr)};".encode())

    for name in ("model", "optimizer", "scheduler", "step"):
        walk(blob.get(name), name)
    return digest.hexdigest()


def checkpoint_bytes(model: UNet, meta: dict[str, Any], optimizer: dict | None = None,
                     scheduler: dict | None = None, step: int = 0,
                     fmt: str = CHECKPOINT_FORMAT) -> bytes:
    """Return the checkpoint file's bytes (torch zip format); `fmt` names the kind of network
    (any module with `arch()`, e.g. the correspondence network's format).

    Content (all loadable with `weights_only=True`): format/version strings, `meta_json` (the
    JSON of `meta` plus the architecture, `step` and `content_sha256`), `model` state dict,
    `optimizer` and `scheduler` state dicts (or None) and the training `step`.
    """
    blob = {"format": fmt, "version": CHECKPOINT_VERSION,
            "model": model.state_dict(), "optimizer": optimizer, "scheduler": scheduler,
            "step": step}
    meta = {**meta, "arch": model.arch(), "step": step, "content_sha256": content_sha256(blob)}
    blob["meta_json"] = json.dumps(meta)
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, model: UNet, meta: dict[str, Any],
                    optimizer: dict | None = None, scheduler: dict | None = None,
                    step: int = 0) -> Path:
    """Write the checkpoint (`checkpoint_bytes`) to `path` atomically; return `path`."""
    from regtool.io import write_bytes_atomic

    return write_bytes_atomic(Path(path), checkpoint_bytes(model, meta, optimizer, scheduler,
                                                           step))


def _check_zip(path: Path, what: str = "U-Net") -> None:
    """ArtifactError unless `path` is a zip archive whose members all match their CRC-32
    (torch.load itself does not check them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ArtifactError(f"{path} is not a readable {what} checkpoint ({first})") from exc
    if bad is not None:
        raise ArtifactError(f"{path} is corrupted: member {bad} fails its CRC-32 check")


def read_checkpoint(path: Path, fmt: str = CHECKPOINT_FORMAT, what: str = "U-Net",
                    arch_keys: tuple[str, ...] = ("n_classes", *ARCH_KEYS)) -> dict[str, Any]:
    """Return the raw checkpoint dict (tensors on CPU) with `meta` parsed from its JSON;
    ArtifactError (one line) if it is missing, not a torch file, damaged (zip CRC or content
    hash), unsafe to load or not a regtool checkpoint of format `fmt` (`what` names it in the
    messages; `arch_keys`: the integers its architecture must state)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} checkpoint not found: {path}")
    _check_zip(path, what)
    try:
        with warnings.catch_warnings():  # a foreign file may warn before failing
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, unsafe global...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ArtifactError(f"{path} is not a readable {what} checkpoint ({first})") from exc
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise ArtifactError(f"{path} is not a regtool {what} checkpoint "
                            f"(format != '{fmt}')")
    if blob.get("version") not in READ_VERSIONS:
        raise ArtifactError(f"{path}: unsupported {what} checkpoint version "
                            f"{blob.get('version')!r}")
    try:
        meta = json.loads(blob["meta_json"])
        arch = meta["arch"]
        _ = [int(arch[k]) for k in arch_keys]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: {what} checkpoint metadata is missing or malformed") \
            from exc
    if not isinstance(blob.get("model"), dict):
        raise ArtifactError(f"{path}: {what} checkpoint holds no model weights")
    if blob["version"] >= 2 and meta.get("content_sha256") != content_sha256(blob):
        raise ArtifactError(f"{path} is corrupted: its tensors do not match the content hash "
                            f"stored in its metadata")
    blob["meta"] = meta
    return blob


def model_from_checkpoint(blob: dict[str, Any], source: str = "checkpoint") -> UNet:
    """Return the UNet described by a checkpoint dict from `read_checkpoint`, weights loaded;
    ArtifactError if the weights do not fit the stored architecture."""
    arch = blob["meta"]["arch"]
    try:
        model = UNet(int(arch["n_classes"]), int(arch["base_channels"]), int(arch["depth"]),
                     int(arch["feature_channels"]))
        model.load_state_dict(blob["model"], strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise ArtifactError(f"{source}: weights do not match the U-Net architecture "
                            f"{arch} ({first})") from exc
    return model


def load_unet(path: Path, device: torch.device | str = "cpu",
              expect: UNetConfig | None = None) -> tuple[UNet, dict[str, Any]]:
    """Return `(model, meta)`: the trained U-Net in eval mode on `device` and its metadata
    (`categories`, `image_size` [W, H], `config`, `metrics`, `arch`, `step`, ...).

    ArtifactError (one line) if the file is missing, corrupted, foreign, or — when `expect`
    is given — its architecture differs from `expect` (base_channels, depth,
    feature_channels).
    """
    blob = read_checkpoint(path)
    meta = blob["meta"]
    if expect is not None:
        want = {k: getattr(expect, k) for k in ARCH_KEYS}
        have = {k: meta["arch"][k] for k in ARCH_KEYS}
        if want != have:
            raise ArtifactError(f"{path}: U-Net architecture {have} differs from the "
                                f"configured {want}")
    model = model_from_checkpoint(blob, str(path)).to(device)
    model.eval()
    return model, meta
