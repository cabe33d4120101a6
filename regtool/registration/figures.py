"""Figures a person reads without the README: the labelled overlay of `regtool register`
(overlay.png) and the frames of its optimisation GIF.

Each figure is a row of three panels — observation | rendering | outlines on a 50/50 blend
(`result.overlay_image`) — enlarged to at least `MIN_PANEL_HEIGHT` pixels (nearest neighbour,
so pixels stay visible) with 2-pixel outlines, a title above each panel and a legend of the two
outline colours below; GIF frames add the iteration and the loss.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from regtool.registration.result import (
    OBSERVED_OUTLINE_RGB,
    RENDERED_OUTLINE_RGB,
    overlay_image,
    to_uint8_rgb,
)

if TYPE_CHECKING:
    from regtool.registration.optimise import IterationEvent

MIN_PANEL_HEIGHT = 240  # pixels; a 160x120 observation is shown at 2x
OUTLINE_THICKNESS = 2  # pixels, at the enlarged size
FONT_SIZE = 13
BAR_HEIGHT = 20  # pixels of the title and legend bars
BAR_RGB = (32, 32, 32)
TEXT_RGB = (235, 235, 235)


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Return `image` (H, W[, C]) repeated `factor` times along both image axes."""
    return image if factor == 1 else image.repeat(factor, axis=0).repeat(factor, axis=1)


def _bar(width: int, items: list[tuple[int, str, tuple[int, int, int] | None]]) -> np.ndarray:
    """Return a (BAR_HEIGHT, width, 3) uint8 bar with texts at x offsets; an item with a colour
    gets a square of that colour before its text (a legend entry)."""
    bar = Image.new("RGB", (width, BAR_HEIGHT), BAR_RGB)
    draw = ImageDraw.Draw(bar)
    for x, text, colour in items:
        if colour is not None:
            draw.rectangle([x, 5, x + 10, 15], fill=colour)
            x += 15
        draw.text((x, 3), text, fill=TEXT_RGB, font=_font())
    return np.asarray(bar)


def overlay_figure(observed: np.ndarray, rendered: np.ndarray, rendered_mask: np.ndarray,
                   observed_mask: np.ndarray | None = None, caption: str | None = None,
                   min_panel_height: int = MIN_PANEL_HEIGHT) -> np.ndarray:
    """Return a uint8 (h, 3w, 3) figure of one view: titles "observation", "rendering" and
    "outlines", the three panels of `overlay_image` enlarged by an integer factor to at least
    `min_panel_height` rows, and a legend bar (green: observed object, magenta: rendered
    silhouette) that ends with `caption` when given. Inputs as for `overlay_image`."""
    obs = to_uint8_rgb(observed, "observed image")
    factor = max(1, math.ceil(min_panel_height / obs.shape[0]))
    rendered_big = _enlarge(np.asarray(rendered_mask) > 0, factor)
    observed_big = (None if observed_mask is None
                    else _enlarge(np.asarray(observed_mask) > 0, factor))
    panels = overlay_image(_enlarge(obs, factor),
                           _enlarge(to_uint8_rgb(rendered, "rendered image"), factor),
                           rendered_big, observed_big, thickness=OUTLINE_THICKNESS)
    w = panels.shape[1] // 3
    titles = _bar(panels.shape[1], [(6, "observation", None), (w + 6, "rendering", None),
                                    (2 * w + 6, "outlines on a 50/50 blend", None)])
    legend_items: list[tuple[int, str, tuple[int, int, int] | None]] = [
        (6, "observed object", OBSERVED_OUTLINE_RGB),
        (140, "rendered silhouette", RENDERED_OUTLINE_RGB)]
    if observed_mask is None:
        legend_items = legend_items[1:]
        legend_items[0] = (6, *legend_items[0][1:])
    if caption:
        legend_items.append((2 * w + 6, caption, None))
    return np.concatenate([titles, panels, _bar(panels.shape[1], legend_items)], axis=0)


def frame_caption(iteration: int, loss: float, pose_step: bool = False) -> str:
    """Return the GIF frame caption: iteration number and loss (and a pose-step marker)."""
    return f"iteration {iteration}  loss {loss:.5f}" + ("  (pose step)" if pose_step else "")


class GifFrames:
    """A `register` callback that draws, at every loss evaluation, the labelled overlay figure
    of the first view (observation | rendering | outlines) captioned with the iteration and the
    loss; `frames(descent)` returns one descent's frames (uint8 H x W x 3)."""

    def __init__(self) -> None:
        self._frames: dict[int, list[np.ndarray]] = {}

    def __call__(self, event: IterationEvent) -> None:
        image, mask = event.rendering.images[0], event.rendering.masks[0]
        observation = event.observations[0]
        rendered = image.detach().cpu().permute(1, 2, 0)[..., :3].numpy()
        if rendered.shape[-1] == 1:
            rendered = np.repeat(rendered, 3, axis=-1)
        record = event.record
        self._frames.setdefault(event.descent, []).append(overlay_figure(
            observation.image, rendered, mask.detach().cpu().numpy() > 0, observation.mask,
            frame_caption(record.iteration, record.loss, record.pose_step)))

    def frames(self, descent: int) -> list[np.ndarray]:
        """Return the frames drawn during descent `descent` ([] if none)."""
        return list(self._frames.get(descent, []))
