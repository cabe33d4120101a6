"""The correspondence network, its checkpoint and its training pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regtool.config import Config, CorrespondenceConfig
from regtool.correspondence.network import (
    CorrespondenceNet,
    checkpoint_bytes,
    load_correspondence,
)
from regtool.errors import ArtifactError


@pytest.mark.parametrize("downsample, size", [(1, (37, 51)), (2, (120, 160)), (3, (50, 70))])
def test_network_output_matches_the_input_size(downsample, size):
    """Any image size: (B, 3, H, W) out, displacement in full-resolution pixels."""
    net = CorrespondenceNet(base_channels=4, depth=3, downsample=downsample)
    obs = torch.rand(2, 4, *size)
    ren = torch.rand(2, 5, *size)
    assert net(obs, ren).shape == (2, 3, *size)
    with pytest.raises(ValueError, match="inputs must be"):
        net(obs, ren[:, :4])


def test_checkpoint_round_trip_and_refusals(tmp_path):
    """Same outputs after save/load; a flipped byte, a truncated file and a U-Net checkpoint
    are refused with one-line ArtifactErrors."""
    torch.manual_seed(0)
    net = CorrespondenceNet(base_channels=4, depth=2, downsample=2).eval()
    path = tmp_path / "c.pt"
    path.write_bytes(checkpoint_bytes(net, {"category": "bottle"}, step=3))
    loaded, meta = load_correspondence(path)
    assert meta["category"] == "bottle" and meta["step"] == 3
    assert meta["arch"] == {"base_channels": 4, "depth": 2, "downsample": 2}
    x, r = torch.rand(1, 4, 24, 32), torch.rand(1, 5, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, r), net(x, r))
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ArtifactError, match="correspondence checkpoint"):
        load_correspondence(bad)
    from regtool.features.unet import UNet
    from regtool.features.unet import checkpoint_bytes as unet_bytes

    unet = tmp_path / "unet.pt"
    unet.write_bytes(unet_bytes(UNet(2, 4, 2, 4), {}))
    with pytest.raises(ArtifactError, match="not a regtool correspondence checkpoint"):
        load_correspondence(unet)
    with pytest.raises(ArtifactError, match="not found"):
        load_correspondence(tmp_path / "missing.pt")


def _source(space, dataset_dir, **overrides):
    from dataclasses import replace

    from regtool.correspondence.train import load_pair_sources

    cfg = CorrespondenceConfig(image_width=96, image_height=72)
    train, test, _ = load_pair_sources(dataset_dir, "bottle", space, cfg, Config().render)
    return replace(train, **overrides), test


@pytest.fixture(scope="module")
def bottle_space_file(small_spaces, tmp_path_factory):
    path = tmp_path_factory.mktemp("ss") / "shapespace.npz"
    small_spaces("bottle").save(path)
    return path


def test_pair_without_perturbation_has_a_zero_field(bottle_space_file, dataset_dir):
    """Estimate = the instance's own code at the true pose: every valid pixel's true
    displacement is (nearly) zero, and most rendered pixels are valid."""
    from regtool.correspondence.pairs import render_pair

    src, _ = _source(bottle_space_file, dataset_dir, max_rotation_deg=0.0,
                     max_translation_m=0.0, canonical_share=0.0, code_noise=0.0)
    pair = render_pair(src, np.random.default_rng(0))
    assert pair.observed.shape == (4, 72, 96) and pair.rendered.shape == (5, 72, 96)
    valid = pair.valid
    assert int(valid.sum()) > 0.9 * int(pair.mask.sum()) > 50
    assert float(pair.target.norm(dim=0)[valid].max()) < 0.05
    assert bool((pair.rendered[0] > 0).eq(pair.mask).all())  # channel 0 is the mask


def test_perturbed_pairs_have_fields_and_symmetry_shrinks_them(bottle_space_file, dataset_dir):
    """With the pose perturbed, the true field is several pixels long; for the symmetric bottle
    the symmetric truth never makes it longer than the plain truth of the same draw."""
    from dataclasses import replace

    from regtool.correspondence.pairs import render_pair

    src, test = _source(bottle_space_file, dataset_dir)
    assert src.symmetry_axis is not None and len(test.meshes) == 2
    plain = replace(src, symmetry_axis=None, symmetry_point=None)
    lengths = []
    for seed in range(4):
        sym = render_pair(src, np.random.default_rng(seed))
        ref = render_pair(plain, np.random.default_rng(seed))
        n_sym = float(sym.target.norm(dim=0)[sym.valid].mean())
        n_ref = float(ref.target.norm(dim=0)[ref.valid].mean())
        assert n_sym <= n_ref + 0.5
        lengths.append(n_ref)
    assert max(lengths) > 3.0
