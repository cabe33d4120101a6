"""Labelled figures of a registration: overlay.png and the optimisation GIF's frames."""

from __future__ import annotations

import numpy as np

from regtool.registration.figures import (
    BAR_HEIGHT,
    BAR_RGB,
    OUTLINE_THICKNESS,
    frame_caption,
    overlay_figure,
)
from regtool.registration.result import (
    OBSERVED_OUTLINE_RGB,
    RENDERED_OUTLINE_RGB,
    mask_outline,
    overlay_image,
)

H, W = 120, 160


def _view():
    rng = np.random.default_rng(0)
    observed = rng.uniform(size=(H, W, 3)).astype(np.float32)
    rendered = rng.uniform(size=(H, W, 3)).astype(np.float32)
    obs_mask = np.zeros((H, W), bool)
    obs_mask[30:90, 50:110] = True
    ren_mask = np.zeros((H, W), bool)
    ren_mask[40:100, 60:120] = True
    return observed, rendered, ren_mask, obs_mask


def _has_colour(region: np.ndarray, rgb) -> bool:
    return bool((region.reshape(-1, 3) == np.asarray(rgb, np.uint8)).all(axis=1).any())


def test_overlay_figure_is_enlarged_titled_and_has_a_legend():
    observed, rendered, ren_mask, obs_mask = _view()
    fig = overlay_figure(observed, rendered, ren_mask, obs_mask)
    # 160x120 panels at 2x (>= 240 rows), a title bar above and a legend bar below.
    assert fig.shape == (BAR_HEIGHT + 2 * H + BAR_HEIGHT, 3 * 2 * W, 3) and fig.dtype == np.uint8
    panels = fig[BAR_HEIGHT:BAR_HEIGHT + 2 * H]
    big = [m.repeat(2, 0).repeat(2, 1) for m in (ren_mask, obs_mask)]
    expected = overlay_image(observed.repeat(2, 0).repeat(2, 1),
                             rendered.repeat(2, 0).repeat(2, 1), *big,
                             thickness=OUTLINE_THICKNESS)
    np.testing.assert_array_equal(panels, expected)
    # Outlines 2 pixels thick on the blend panel.
    blend = panels[:, 4 * W:]
    ring = mask_outline(big[0], 2)
    assert ring.sum() > mask_outline(big[0], 1).sum() * 1.9
    assert (blend[ring] == RENDERED_OUTLINE_RGB).all()
    # Text in the title bar of every panel (pixels other than the bar colour).
    titles, legend = fig[:BAR_HEIGHT], fig[-BAR_HEIGHT:]
    for k in range(3):
        part = titles[:, k * 2 * W:(k + 1) * 2 * W]
        assert (part != np.asarray(BAR_RGB, np.uint8)).any(axis=-1).sum() > 50
    # Legend squares in the two outline colours.
    assert _has_colour(legend, OBSERVED_OUTLINE_RGB) and _has_colour(legend, RENDERED_OUTLINE_RGB)


def test_overlay_figure_without_observed_mask_has_one_legend_entry():
    observed, rendered, ren_mask, _ = _view()
    legend = overlay_figure(observed, rendered, ren_mask, None)[-BAR_HEIGHT:]
    assert _has_colour(legend, RENDERED_OUTLINE_RGB)
    assert not _has_colour(legend, OBSERVED_OUTLINE_RGB)


def test_frame_caption_is_drawn():
    observed, rendered, ren_mask, obs_mask = _view()
    plain = overlay_figure(observed, rendered, ren_mask, obs_mask)
    captioned = overlay_figure(observed, rendered, ren_mask, obs_mask, frame_caption(7, 0.0123))
    assert frame_caption(7, 0.0123) == "iteration 7  loss 0.01230"
    assert "pose step" in frame_caption(1, 0.5, pose_step=True)
    diff = (plain != captioned).any(axis=-1)
    assert diff[:-BAR_HEIGHT].sum() == 0  # only the legend bar changes
    assert diff[-BAR_HEIGHT:, 4 * W:].sum() > 50  # the caption sits under the blend panel
