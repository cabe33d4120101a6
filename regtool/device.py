"""The compute device, chosen in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch CPU threads (0: leave torch's setting), restoring the
    previous count afterwards."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
