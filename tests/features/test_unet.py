"""UNet shapes, checkpoints and their failure modes (no GL needed)."""

from __future__ import annotations

import json

import pytest
import torch

from regtool.config import UNetConfig
from regtool.errors import ArtifactError
from regtool.features.unet import UNet, load_unet, save_checkpoint


@pytest.mark.parametrize("depth,h,w", [(3, 120, 160), (3, 37, 53), (4, 120, 160), (1, 9, 7)])
def test_shapes_any_size(depth, h, w):
    net = UNet(n_classes=3, base_channels=4, depth=depth, feature_channels=10).eval()
    x = torch.rand(2, 3, h, w)
    with torch.no_grad():
        assert net(x).shape == (2, 3, h, w)
        f = net.features(x)
    assert f.shape == (2, 10, h, w)
    assert (f >= 0).all()  # after ReLU
    # The feature map is not dead and depends on the image: the two random inputs differ.
    assert (f > 0).float().mean() > 0.05
    assert not torch.allclose(f[0], f[1])


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        UNet(2, 4, 2, 8)(torch.rand(1, 1, 16, 16))


def test_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = UNet(2, 4, 2, 8).eval()
    path = save_checkpoint(tmp_path / "u.pt", net, {"categories": ["bottle"],
                                                    "image_size": [32, 24]}, step=7)
    loaded, meta = load_unet(path, "cpu")
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert meta["categories"] == ["bottle"] and meta["step"] == 7
    assert meta["arch"] == {"n_classes": 2, "base_channels": 4, "depth": 2, "feature_channels": 8}
    assert not loaded.training
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_unet(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x80\x04not a torch file at all" * 10)
    with pytest.raises(ArtifactError, match="not a readable U-Net checkpoint"):
        load_unet(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ArtifactError, match="not a regtool U-Net checkpoint"):
        load_unet(foreign)
    # A pickle of an arbitrary object must be refused, never executed.
    evil = tmp_path / "evil.pt"
    torch.save({"format": "regtool-unet", "obj": torch.nn.Linear(2, 2)}, evil)
    with pytest.raises(ArtifactError, match="not a readable U-Net checkpoint"):
        load_unet(evil)


def test_checkpoint_of_another_architecture(tmp_path):
    net = UNet(2, 4, 2, 8)
    path = save_checkpoint(tmp_path / "u.pt", net, {"categories": ["bottle"]})
    with pytest.raises(ArtifactError, match="differs from the configured"):
        load_unet(path, expect=UNetConfig(base_channels=8, depth=2, feature_channels=8))
    # Weights that do not fit the architecture recorded next to them.
    blob = torch.load(path, weights_only=True)
    meta = json.loads(blob["meta_json"])
    meta["arch"]["base_channels"] = 6
    blob["meta_json"] = json.dumps(meta)
    torch.save(blob, path)
    with pytest.raises(ArtifactError, match="do not match the U-Net architecture"):
        load_unet(path)
