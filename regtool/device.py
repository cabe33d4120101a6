"""The compute device, chosen in one place."""

from __future__ import annotations

import torch

from regtool.errors import DeviceError


def resolve_device(name: str) -> torch.device:
    """Return the torch device for 'cpu' or 'cuda[:N]'; DeviceError if it is not available."""
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda requested but no CUDA GPU is available "
                              "(torch.cuda.is_available() is False); use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
        return dev
    raise DeviceError(f"unknown device '{name}' (use cpu or cuda)")
