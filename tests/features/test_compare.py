"""FeatureLoss on renderings of procedural bottles: the loss landscape points the right way and
its gradient with respect to the rendered image is finite and lives on the object border."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from regtool.errors import FeatureError
from regtool.features.compare import FeatureLoss, aggregate, normalise_channels

pytestmark = pytest.mark.gl

W, H = 128, 96  # the tiny U-Net's training size (tests/features/conftest.py)


def test_normalise_and_aggregate():
    f = torch.rand(2, 5, 7, 9) * 3 + 1
    n = normalise_channels(f)
    assert torch.allclose(n.amin(dim=(2, 3)), torch.tensor(-1.0))
    assert torch.allclose(n.amax(dim=(2, 3)), torch.tensor(1.0))
    assert torch.isfinite(normalise_channels(torch.ones(1, 2, 3, 3))).all()
    a = aggregate(f)
    assert a.shape == (2, 7, 9) and a.abs().max() <= 1.0


def make_scene(dataset_dir, width: int = W, height: int = H) -> dict:
    """Observed: test mesh A (red, on a gradient background); candidates rendered grey on black
    like a renderer would: A at the true pose, the most different training mesh B at the true
    pose, A shifted 3 cm sideways; (1, 3, height, width) tensors and their masks."""
    from regtool.data.dataset import load_category
    from regtool.geometry.camera import CameraIntrinsics, Pose
    from regtool.render.shading import Material, render_shaded

    data = load_category(dataset_dir, "bottle")
    cam = CameraIntrinsics.from_fov(width, height, 40.0)
    pose = Pose.look_at(0.6, azimuth_deg=30.0, elevation_deg=15.0)
    a = data.test[0].mesh
    yy, xx = np.mgrid[0:height, 0:width]
    bg = np.stack([0.2 + 0.6 * xx / width, 0.7 - 0.4 * yy / height, 0.3 + 0 * xx], -1)
    observed = render_shaded(a.vertices, a.faces, pose, cam, Material((0.8, 0.25, 0.2)),
                             background=bg)

    def grey(mesh, p):
        return render_shaded(mesh.vertices, mesh.faces, p, cam, Material(), background=0.0)

    correct = grey(a, pose)
    candidates = {n: grey(m, pose) for n, m in data.train.items()}
    iou = {n: (c.mask & correct.mask).sum() / (c.mask | correct.mask).sum()
           for n, c in candidates.items()}
    wrong_name = min(iou, key=iou.get)
    shifted = grey(a, Pose(pose.rotation, pose.translation + np.array([0.03, 0.0, 0.0])))

    def t(img):
        return torch.from_numpy(np.ascontiguousarray(img.rgb)).permute(2, 0, 1)[None].float()

    return {"observed": t(observed), "correct": t(correct), "wrong": t(candidates[wrong_name]),
            "shifted": t(shifted), "wrong_iou": iou[wrong_name], "mask": correct.mask,
            "shifted_mask": shifted.mask, "observed_mask": observed.mask}


@pytest.fixture(scope="module")
def scene(dataset_dir):
    return make_scene(dataset_dir)


@pytest.fixture(scope="module")
def unet(tiny_unet):
    from regtool.features.unet import load_unet

    return load_unet(tiny_unet[0], "cpu")[0]


@pytest.mark.parametrize("kind", ["features", "mask", "features+mask", "rgb"])
def test_loss_lower_for_correct_shape_and_pose(scene, unet, kind):
    # The ranking needs a network that segments the object: with the fixture U-Net trained for
    # 120 steps (IoU 0.63 on this observation) the paper's `features` comparison scored the
    # 3 cm shift below the truth (0.0640 vs 0.0651); trained for 400 steps (IoU 0.89, seeds
    # 3-5) it ranks correct < shifted by 10-60 %. test_segment_observed checks that premise.
    loss = FeatureLoss(unet, kind)
    obs = scene["observed"]
    values = {k: float(loss(scene[k], obs)) for k in ("correct", "wrong", "shifted")}
    assert scene["wrong_iou"] < 0.9
    if kind == "rgb":
        # Colour differs between observation and rendering: RGB comparison is not
        # meaningful here, only check it runs and is finite.
        assert all(np.isfinite(v) for v in values.values())
        return
    assert values["correct"] < values["wrong"], values
    assert values["correct"] < values["shifted"], values


def test_features_and_mask_average_both_comparisons(scene, unet):
    # The object probability is mapped to [-1, 1] like the feature map: 4x its squared error.
    region = torch.from_numpy(scene["observed_mask"])[None, None]
    for rendered in ("correct", "shifted"):
        args = (scene[rendered], scene["observed"], region)
        both = float(FeatureLoss(unet, "features+mask")(*args))
        features = float(FeatureLoss(unet, "features")(*args))
        mask = float(FeatureLoss(unet, "mask")(*args))
        assert both == pytest.approx((features + 4.0 * mask) / 2.0, rel=1e-5)
        assert features > 0 and mask > 0
    rendered = scene["shifted"].clone().requires_grad_(True)
    FeatureLoss(unet, "features+mask")(rendered, scene["observed"]).backward()
    assert torch.isfinite(rendered.grad).all() and rendered.grad.abs().sum() > 0


def test_segment_observed(scene, unet):
    seg = FeatureLoss(unet).segment(scene["observed"])[0].numpy()
    truth = scene["observed_mask"]
    assert (seg & truth).sum() / (seg | truth).sum() > 0.8


def image_gradient(scene: dict, unet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (|d loss / d rendered image| summed over the channels (H, W), the shifted
    rendering's border (2 px either side), the pixels more than 15 px from both objects) of the
    `features` comparison over the whole image, the shifted rendering against the observation."""
    rendered = scene["shifted"].clone().requires_grad_(True)
    FeatureLoss(unet, "features")(rendered, scene["observed"]).backward()
    g = rendered.grad[0].abs().sum(0).numpy()
    mask = scene["shifted_mask"]
    border = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask,
                                                                                   iterations=2)
    far = ~ndimage.binary_dilation(mask | scene["observed_mask"], iterations=15)
    return g, border, far


def test_gradient_reaches_the_object_border(scene, unet):
    g, border, _ = image_gradient(scene, unet)
    assert np.isfinite(g).all()
    assert (g[border] > 0).mean() > 0.9


@pytest.mark.slow
def test_gradient_is_largest_on_the_object_border(dataset_dir, repo_root, tmp_path):
    """Over the whole image the grey-on-black rendering and the observation on its coloured
    background differ everywhere; the gradient concentrates on the border only where the
    network maps both backgrounds alike. The fixture's tiny U-Net (400 steps, 128x96) does not
    reliably: border / far 0.48, 1.70, 2.46 for seeds 3-5, and 1.23, 0.40, 0.10 at 800 steps
    (one torch thread; once outlines were composited by coverage, session 12). The quick
    profile's network: 7-19x (three seeds); the default profile's: 3.8-4.0x."""
    from regtool.config import load_config
    from regtool.features.train import train_unet
    from regtool.features.unet import load_unet

    cfg = load_config(repo_root / "configs" / "quick.toml")
    train_unet(dataset_dir, "bottle", cfg.unet, cfg.render, tmp_path / "unet.pt", seed=0)
    unet = load_unet(tmp_path / "unet.pt", "cpu")[0]
    g, border, far = image_gradient(make_scene(dataset_dir, cfg.unet.image_width,
                                               cfg.unet.image_height), unet)
    assert np.isfinite(g).all() and (g[border] > 0).mean() > 0.9
    assert g[border].mean() > g[far].mean(), (g[border].mean(), g[far].mean())


def test_observed_features_cached(scene, unet):
    loss = FeatureLoss(unet)
    obs = scene["observed"].clone()
    first = loss.observed_features(obs)
    assert loss.observed_features(obs) is first
    obs.mul_(0.5)  # an in-place change invalidates the cache
    assert loss.observed_features(obs) is not first
    assert first.shape == (1, H, W)


def test_region_and_bad_input(scene, unet):
    loss = FeatureLoss(unet)
    region = torch.from_numpy(scene["mask"])[None, None]
    # The region-weighted loss is the mean squared difference of the aggregated maps over the
    # region's pixels.
    with torch.no_grad():
        diff2 = (aggregate(unet.features(scene["correct"]))
                 - aggregate(unet.features(scene["observed"]))) ** 2
    expected = float(diff2[0][torch.from_numpy(scene["mask"])].mean())
    assert float(loss(scene["correct"], scene["observed"], region)) == pytest.approx(
        expected, rel=1e-5)
    assert expected > 0
    with pytest.raises(FeatureError, match="region"):
        loss(scene["correct"], scene["observed"], region[..., :10])
    with pytest.raises(FeatureError, match="differ in shape"):
        loss(scene["correct"][..., :50], scene["observed"])
    with pytest.raises(FeatureError, match="unknown image comparison"):
        FeatureLoss(unet, "lpips")


class RedIsObject(torch.nn.Module):
    """A stand-in U-Net: feature = the image's channels, object probability = the red channel
    (logits: background log(1 - r), object log(r)); FeatureLoss needs `features` and `head`."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def head(self, f: torch.Tensor) -> torch.Tensor:
        r = f[:, :1].clamp(1e-4, 1 - 1e-4)
        return torch.cat([torch.log(1 - r), torch.log(r)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_probability_weighting_ignores_clutter_away_from_the_object():
    """Weighting "probability": a change where neither the observation nor the rendering shows
    the object does not change the loss; one on the object does. The region weighting (no
    region: every pixel) counts both."""
    torch.nn.Module.__init__(net := RedIsObject())
    net.weight = torch.nn.Parameter(torch.zeros(1))  # FeatureLoss freezes the parameters
    observed = torch.zeros(1, 3, 40, 60)
    observed[:, 0, 10:30, 20:40] = 1.0  # the object: red
    observed[:, 1] = torch.linspace(0, 1, 60)  # a ramp: clutter stays within its range
    rendered = observed.clone()
    rendered[:, 0, 12:28, 22:38] = 0.9  # a slightly different object
    clutter = rendered.clone()
    clutter[:, 1:, 0:8, 0:10] = 0.6  # green-blue clutter in a corner, far from the object
    on_object = rendered.clone()
    on_object[:, 1, 15:25, 25:35] = 1.0
    prob = FeatureLoss(net, "features+mask", "probability", dilation=2)
    region = FeatureLoss(net, "features+mask", "region")
    base = float(prob(rendered, observed))
    assert base > 0
    assert float(prob(clutter, observed)) == pytest.approx(base, rel=1e-3)
    assert float(prob(on_object, observed)) > 1.2 * base
    assert float(region(clutter, observed)) > 1.2 * float(region(rendered, observed))
    with pytest.raises(FeatureError, match="needs the comparison"):
        FeatureLoss(net, "features", "probability")
    with pytest.raises(FeatureError, match="unknown pixel weighting"):
        FeatureLoss(net, "features", "nope")
