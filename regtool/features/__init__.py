"""The U-Net feature extractor: network and checkpoints (`unet`), on-the-fly training views
(`views`), training (`train`, `regtool train-unet`) and the feature-space image comparison
(`compare.FeatureLoss`). Submodules are imported on use so render worker processes stay light.
"""

from __future__ import annotations

__all__ = ["UNet", "load_unet", "train_unet", "FeatureLoss"]


def __getattr__(name: str):
    if name in ("UNet", "load_unet"):
        from regtool.features import unet

        return getattr(unet, name)
    if name == "train_unet":
        from regtool.features.train import train_unet

        return train_unet
    if name == "FeatureLoss":
        from regtool.features.compare import FeatureLoss

        return FeatureLoss
    raise AttributeError(f"module 'regtool.features' has no attribute '{name}'")
