"""Photo-like rendering (pyrender): the same view renders the same pixels every time."""

from __future__ import annotations

import numpy as np

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
