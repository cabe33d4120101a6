"""Photo-like rendering (pyrender): the same view renders the same pixels every time, and an
outline pixel blends object and background by its coverage."""

from __future__ import annotations

import numpy as np
import trimesh

from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.render.shading import Light, Lighting, Material, render_shaded


def test_lights_are_bound_in_the_order_of_their_names():
    import pyrender

    from regtool.render.shading import _light_ordered_scene

    scene = _light_ordered_scene(pyrender)()
    for name in ("light002", "light000", "light001"):
        scene.add(pyrender.DirectionalLight(), name=name)
    # pyrender itself returns a set, iterated in an order that follows memory addresses.
    assert [n.name for n in scene.light_nodes] == ["light000", "light001", "light002"]
    assert len(scene.directional_light_nodes) == 3


def test_same_view_renders_identical_pixels(drill):
    camera = CameraIntrinsics.from_fov(160, 120, 40.0)
    pose = Pose.look_at(0.6, azimuth_deg=40.0, elevation_deg=25.0)
    lighting = Lighting(ambient=0.3, lights=(
        Light((0.3, -0.5, 1.0), (0.9, 0.8, 0.7), 2.0),
        Light((-0.6, 0.2, 1.0), (0.7, 0.9, 1.0), 1.5),
        Light((0.1, 0.7, 1.0), (1.0, 1.0, 0.8), 1.0)))
    vertices = np.asarray(drill.vertices) - np.asarray(drill.vertices).mean(0)
    scale = 0.15 / np.ptp(vertices, axis=0).max()
    images = [render_shaded(vertices * scale, np.asarray(drill.faces), pose, camera,
                            Material((0.6, 0.4, 0.3), 0.3, 0.5), lighting).rgb
              for _ in range(6)]
    assert images[0][..., 0].std() > 0.01  # the object is in view and shaded
    for other in images[1:]:
        assert np.array_equal(images[0], other)


def test_outline_pixels_blend_object_and_background_by_coverage():
    """pyrender's colour is premultiplied by the multisample coverage: composited once more with
    alpha, an outline pixel at coverage a showed a^2 of the object (a dark halo around every
    object in every training view and observation; 1/16 instead of 1/4 at a = 0.25)."""
    camera = CameraIntrinsics.from_fov(160, 120, 45.0)
    box = trimesh.creation.box((0.1, 0.1, 0.1))
    pose = Pose(np.eye(3), np.array([0.013, 0.007, 0.5]))  # edges off the pixel grid
    flat = Lighting(ambient=1.0, lights=())
    for background in (0.0, 1.0):
        img = render_shaded(box.vertices, box.faces, pose, camera,
                            Material((0.8, 0.8, 0.8), 0.0, 1.0), flat,
                            background=(background,) * 3, smooth=False)
        colour = img.rgb[img.alpha == 1.0].mean(0)
        assert np.ptp(img.rgb[img.alpha == 1.0], axis=0).max() < 1e-6  # one flat colour
        edge = (img.alpha > 0.0) & (img.alpha < 1.0)
        assert edge.sum() > 50
        alpha = img.alpha[edge][:, None]
        expected = alpha * colour + (1.0 - alpha) * background
        np.testing.assert_allclose(img.rgb[edge], expected, atol=2.0 / 255.0)
