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


@pytest.mark.parametrize("downsample, crop, size", [(1, 0, (37, 51)), (2, 0, (120, 160)),
                                                    (3, 0, (50, 70)), (1, 24, (37, 51))])
def test_network_output_matches_the_input_size(downsample, crop, size):
    """Any image size: (B, 3, H, W) out, displacement in full-resolution pixels."""
    net = CorrespondenceNet(base_channels=4, depth=3, downsample=downsample, crop=crop)
    obs = torch.rand(2, 4, *size)
    ren = torch.rand(2, 5, *size)
    assert net(obs, ren).shape == (2, 3, *size)
    with pytest.raises(ValueError, match="inputs must be"):
        net(obs, ren[:, :4])


def test_object_window_is_the_square_around_both_masks():
    """The window is centred on the union of the masks' boxes, 10 % of its longer side added
    each side; an empty mask gives the whole image."""
    from regtool.correspondence.network import object_window

    union = torch.zeros(2, 120, 160, dtype=torch.bool)
    union[0, 30:50, 40:60] = True  # 20 x 20
    union[0, 60:70, 45:55] = True  # extends the box to rows 30..70: 40 tall, 20 wide
    centre, side = object_window(union)
    torch.testing.assert_close(centre[0], torch.tensor([50.0, 50.0]))
    torch.testing.assert_close(side[0], torch.tensor(40.0 * 1.2))
    torch.testing.assert_close(centre[1], torch.tensor([80.0, 60.0]))
    torch.testing.assert_close(side[1], torch.tensor(160.0 * 1.2))


def test_cropped_network_maps_window_outputs_back_to_image_pixels(monkeypatch):
    """With the U-Net replaced by a pass-through of its first three input channels, the
    cropped forward returns, at each pixel inside the window, the input there (sampled to the
    window and back: smooth ramps survive bilinear resampling), the displacement scaled by the
    window's image pixels per network pixel and the log error shifted by its log."""
    import regtool.correspondence.network as network

    monkeypatch.setattr(network, "encoder_decoder", lambda net, x, head: x[:, :3])
    h, w, size = 60, 80, 32
    net = CorrespondenceNet(base_channels=4, depth=2, crop=size)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    obs = torch.zeros(1, 4, h, w)
    obs[0, 0] = 0.5 + 0.25 * xs / w  # normalised to xs / w inside the network
    obs[0, 1] = 0.5 + 0.25 * ys / h
    obs[0, 2] = 0.75
    obs[0, 3, 20:40, 30:50] = 1.0
    ren = torch.zeros(1, 5, h, w)
    ren[0, 0, 25:45, 35:55] = 1.0  # union: rows 20..45, columns 30..55 -> 25 x 25
    out = net(obs, ren)[0]
    scale = 25 * 1.2 / size
    inside = (slice(22, 43), slice(32, 53))
    torch.testing.assert_close(out[0][inside], network.DISPLACEMENT_UNIT * scale * xs[inside] / w,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1][inside], network.DISPLACEMENT_UNIT * scale * ys[inside] / h,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[2][inside], torch.full((21, 21), 1.0 + np.log(scale)),
                               atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    """Same outputs after save/load; a flipped byte, a truncated file and a U-Net checkpoint
    are refused with one-line ArtifactErrors."""
    torch.manual_seed(0)
    net = CorrespondenceNet(base_channels=4, depth=2, downsample=2).eval()
    path = tmp_path / "c.pt"
    path.write_bytes(checkpoint_bytes(net, {"category": "bottle"}, step=3))
    loaded, meta = load_correspondence(path)
    assert meta["category"] == "bottle" and meta["step"] == 3
    assert meta["arch"] == {"base_channels": 4, "depth": 2, "downsample": 2, "crop": 0}
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
