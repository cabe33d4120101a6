"""The correspondence network: observed RGB + the current rendering's G-buffer -> a 2D
displacement per rendered pixel (pixels) and its expected error (the confidence).

Inputs: the observation (4 channels: RGB in [0, 1] and its object mask, the U-Net's
segmentation at registration time, the true coverage in training) and (`network_input`) the
rendering's
G-buffer: mask (1), camera-frame unit normals (3, interpolated smooth vertex normals, facing
the camera) and depth relative to the object's depth in object radii (1), zero off the object.
Output (`CorrespondenceNet.forward`): (B, 3, H, W): displacement (u, v) in pixels and
s = log of the expected end-point error in pixels. A U-Net (early fusion of both inputs) that
works at 1 / `downsample` of the image size (inputs average-pooled, outputs upsampled
bilinearly and scaled to full-resolution pixels).

Checkpoints use the U-Net's safe format (`features.unet.checkpoint_bytes`: tensors and plain
values only, zip CRC and content hash checked on load) with their own format name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regtool.errors import ArtifactError
from regtool.features.unet import _block, encoder_decoder

CHECKPOINT_FORMAT = "regtool-correspondence"
ARCH_KEYS = ("base_channels", "depth", "downsample")
RENDER_CHANNELS = 5  # mask, normals (3), relative depth
OBS_CHANNELS = 4  # RGB + object mask
DISPLACEMENT_UNIT = 8.0  # pixels per unit of the raw output (keeps the outputs near 1)


class CorrespondenceNet(nn.Module):
    """Encoder-decoder with skip connections over the concatenated observation and G-buffer
    (module docstring); `depth` 2x2 max-pools, `base_channels * 2**i` channels at level i."""

    def __init__(self, base_channels: int = 16, depth: int = 4, downsample: int = 2):
        super().__init__()
        self.base_channels, self.depth, self.downsample = base_channels, depth, downsample
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        c_in = OBS_CHANNELS + RENDER_CHANNELS
        self.encoder = nn.ModuleList([_block(c_in, widths[0])] + [
            _block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.reduce = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.reduce.append(nn.Conv2d(widths[i], widths[i - 1], 1))
            self.decoder.append(_block(2 * widths[i - 1], widths[i - 1]))
        self.head = nn.Conv2d(widths[0], 3, 1)

    def arch(self) -> dict[str, int]:
        """Return the architecture parameters (JSON-ready)."""
        return {"base_channels": self.base_channels, "depth": self.depth,
                "downsample": self.downsample}

    def forward(self, observed: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
        """Return (B, 3, H, W): displacement (u, v) in pixels and the log expected error, for
        observed (B, 4, H, W) RGB in [0, 1] + object mask and rendered (B, 5, H, W) G-buffer
        channels."""
        if observed.ndim != 4 or observed.shape[1] != OBS_CHANNELS \
                or rendered.shape != (observed.shape[0], RENDER_CHANNELS, *observed.shape[2:]):
            raise ValueError(f"inputs must be (B, 4, H, W) and (B, 5, H, W), got "
                             f"{tuple(observed.shape)} and {tuple(rendered.shape)}")
        h, w = observed.shape[-2:]
        x = torch.cat([(observed[:, :3] - 0.5) / 0.25, observed[:, 3:], rendered], dim=1)
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample, ceil_mode=True)
        out = encoder_decoder(self, x, self.head)
        if self.downsample > 1:
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        disp = out[:, :2] * DISPLACEMENT_UNIT
        return torch.cat([disp, out[:, 2:]], dim=1)


def network_input(gbuffer, vertices: torch.Tensor, faces: torch.Tensor,
                  radius: float) -> torch.Tensor:
    """Return the (5, H, W) float32 G-buffer channels of a rendering: mask, camera-frame unit
    normals facing the camera (smooth vertex normals of `vertices` (V, 3), camera frame,
    interpolated with the barycentrics) and (depth - median covered depth) / radius (metres /
    metres; `radius`: the object's), all zero off the object."""
    from regtool.render.diff import vertex_normals

    h, w = gbuffer.height, gbuffer.width
    out = torch.zeros(RENDER_CHANNELS, h * w, dtype=torch.float32)
    idx = gbuffer.mask.reshape(-1).nonzero().squeeze(1)
    if idx.numel():
        v = vertices.detach().to("cpu", torch.float32)
        normals = vertex_normals(v, faces.to("cpu"))
        corners = faces.to("cpu")[gbuffer.face_id.reshape(-1)[idx] - 1]
        bary = gbuffer.bary.reshape(-1, 3)[idx]
        n = (normals[corners] * bary[..., None]).sum(1)
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        point = gbuffer.point.reshape(-1, 3)[idx]
        n = torch.where((n * point).sum(-1, keepdim=True) > 0, -n, n)
        out[0, idx] = 1.0
        out[1:4, idx] = n.t()
        depth = gbuffer.depth.reshape(-1)[idx]
        out[4, idx] = (depth - depth.median()) / radius
    return out.reshape(RENDER_CHANNELS, h, w)


def prediction_field(output: torch.Tensor, mask: torch.Tensor):
    """Return the `correspondence.field.Field` of one network output (3, H, W) on the
    rendering's mask (H, W): the displacement, and the weight 1 / (1 + e^2) with e = exp(s)
    the predicted end-point error in pixels (zero off the mask)."""
    from regtool.correspondence.field import Field

    disp = output[:2].permute(1, 2, 0).detach().to("cpu", torch.float32).contiguous()
    err = output[2].detach().to("cpu", torch.float32).clamp(-10.0, 10.0).exp()
    weight = mask.to(torch.float32) / (1.0 + err * err)
    return Field(disp, weight)


def checkpoint_bytes(model: CorrespondenceNet, meta: dict[str, Any],
                     optimizer: dict | None = None, scheduler: dict | None = None,
                     step: int = 0) -> bytes:
    """Return the checkpoint's bytes (the U-Net's safe format, `CHECKPOINT_FORMAT`)."""
    from regtool.features.unet import checkpoint_bytes as unet_checkpoint_bytes

    return unet_checkpoint_bytes(model, meta, optimizer, scheduler, step,  # type: ignore[arg-type]
                                 fmt=CHECKPOINT_FORMAT)


def load_correspondence(path: Path, device: torch.device | str = "cpu"
                        ) -> tuple[CorrespondenceNet, dict[str, Any]]:
    """Return (network in eval mode on `device`, metadata: category, image_size, config,
    metrics, arch, step...); ArtifactError (one line) if the file is missing, damaged or not
    a correspondence checkpoint."""
    from regtool.features.unet import read_checkpoint

    blob = read_checkpoint(Path(path), fmt=CHECKPOINT_FORMAT, what="correspondence",
                           arch_keys=ARCH_KEYS)
    model = model_from_checkpoint(blob, str(path)).to(device)
    model.eval()
    return model, blob["meta"]


def model_from_checkpoint(blob: dict[str, Any], source: str) -> CorrespondenceNet:
    """Return the network of a checkpoint dict (`read_checkpoint`), weights loaded;
    ArtifactError if they do not fit the stored architecture."""
    arch = blob["meta"]["arch"]
    try:
        model = CorrespondenceNet(int(arch["base_channels"]), int(arch["depth"]),
                                  int(arch["downsample"]))
        model.load_state_dict(blob["model"], strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise ArtifactError(f"{source}: weights do not match the correspondence network "
                            f"{arch} ({first})") from exc
    return model


def observation_input(image, mask) -> torch.Tensor:
    """Return the (4, H, W) float32 observation channels: RGB (H, W, 3) in [0, 1] and the
    object mask (H, W) bool (None: zeros)."""
    rgb = torch.as_tensor(image, dtype=torch.float32).permute(2, 0, 1)
    m = torch.zeros(1, *rgb.shape[1:]) if mask is None else \
        torch.as_tensor(mask, dtype=torch.float32)[None]
    return torch.cat([rgb, m])


def network_estimator(model: CorrespondenceNet, images: list, masks: list, radius: float,
                      device: torch.device | str = "cpu"):
    """Return a field estimator (`registration.learned.FieldEstimator`) that predicts the
    field with `model` from the observed images (per view (H, W, 3) float RGB in [0, 1]), their
    object masks ((H, W) bool, e.g. the U-Net's segmentation) and each rendering's G-buffer
    (`network_input`; `radius`: the canonical's, metres)."""
    observed = [observation_input(im, m)[None].to(device) for im, m in zip(images, masks)]

    @torch.no_grad()
    def estimate(view: int, gbuffer, vertices: torch.Tensor, faces: torch.Tensor, camera):
        rendered = network_input(gbuffer, vertices, faces, radius)[None].to(device)
        output = model(observed[view], rendered)[0]
        return prediction_field(output, gbuffer.mask)

    return estimate
