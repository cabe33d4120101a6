"""Photo-like RGB rendering with pyrender: lights, materials and backgrounds.

Used for observed images (evaluation), the U-Net's training views and contact sheets. Images
are rows top to bottom (numpy image order), float32 RGB in [0, 1].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from regtool.errors import RenderError
from regtool.geometry.camera import CV_TO_GL, CameraIntrinsics, Pose
from regtool.render.context import get_context


@dataclass(frozen=True)
class Material:
    """A simple PBR material: linear RGB base colour in [0, 1], metallic and roughness."""

    base_color: tuple[float, float, float] = (0.7, 0.7, 0.72)
    metallic: float = 0.1
    roughness: float = 0.6


@dataclass(frozen=True)
class Light:
    """A directional light given as a direction in the camera frame (OpenCV: +z looks ahead)
    it shines along, with an RGB colour and an intensity (pyrender units, W/m^2)."""

    direction: tuple[float, float, float] = (0.3, 0.5, 1.0)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 3.0


@dataclass(frozen=True)
class Lighting:
    """Ambient light plus directional lights."""

    ambient: float = 0.35
    lights: tuple[Light, ...] = field(default_factory=lambda: (
        Light((0.3, 0.5, 1.0), intensity=3.0), Light((-0.6, -0.2, 1.0), intensity=1.5)))


@dataclass(frozen=True)
class ShadedImage:
    """A rendering: `rgb` (H, W, 3) float32 in [0, 1] composited over the background, `depth`
    (H, W) float32 camera-frame z in metres (0 on the background), `mask` (H, W) bool object
    coverage (alpha >= 0.5, train-unet's label), `alpha` (H, W) float32 anti-aliased coverage in
    [0, 1]. pyrender resolves the multisampled depth to one sample per pixel, up to 0.4 px off
    the pixel centre, so `depth > 0` is shifted against the colour by a fraction of a pixel
    (docs/experiments.md); `mask` follows the colour instead."""

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray


def _light_pose(direction: tuple[float, float, float]) -> np.ndarray:
    """Return the pyrender node pose (GL convention: the light shines along its -z axis) of a
    directional light shining along `direction` given in the OpenCV camera frame."""
    d = CV_TO_GL @ np.asarray(direction, dtype=float)
    z = -d / np.linalg.norm(d)
    helper = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    return pose


def render_shaded(vertices: np.ndarray, faces: np.ndarray, pose: Pose, camera: CameraIntrinsics,
                  material: Material = Material(), lighting: Lighting = Lighting(),
                  background: np.ndarray | tuple[float, float, float] = (0.0, 0.0, 0.0),
                  smooth: bool = True, znear: float = 0.01, zfar: float = 100.0,
                  vertex_normals: np.ndarray | None = None) -> ShadedImage:
    """Render the mesh (object frame, metres) seen by `camera` at `pose`.

    `vertex_normals` (V, 3), object frame: the smooth-shading normals if already known (by
    default trimesh computes them from the faces, the same values).

    `background` is an RGB colour or an (H, W, 3) float image in [0, 1] composited behind the
    object with pyrender's anti-aliased alpha. All scene nodes live in the camera frame: the
    GL camera sits at the origin with pose diag(1, -1, -1) (OpenCV -> GL).
    """
    import pyrender
    import trimesh

    ctx = get_context(camera.width, camera.height)
    scene = _light_ordered_scene(pyrender)(bg_color=np.zeros(4),
                                           ambient_light=np.full(3, lighting.ambient))
    vertices = np.asarray(vertices, np.float64)
    if vertex_normals is not None and np.shape(vertex_normals) != vertices.shape:
        raise RenderError(f"vertex normals have shape {np.shape(vertex_normals)}, the vertices "
                          f"{vertices.shape}")
    mesh = trimesh.Trimesh(vertices, np.asarray(faces, np.int64), vertex_normals=vertex_normals,
                           process=False)
    mat = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=np.array([*material.base_color, 1.0]), metallicFactor=material.metallic,
        roughnessFactor=material.roughness, doubleSided=False)
    scene.add(pyrender.Mesh.from_trimesh(mesh, material=mat, smooth=smooth), pose=pose.matrix())
    cam_pose = np.eye(4)
    cam_pose[:3, :3] = CV_TO_GL
    scene.add(pyrender.IntrinsicsCamera(camera.fx, camera.fy, camera.cx, camera.cy,
                                        znear=znear, zfar=zfar), pose=cam_pose)
    for k, light in enumerate(lighting.lights):
        scene.add(pyrender.DirectionalLight(color=np.asarray(light.color),
                                            intensity=light.intensity),
                  name=f"light{k:03d}", pose=_light_pose(light.direction))
    color, depth = ctx.renderer.render(scene, flags=pyrender.RenderFlags.RGBA)
    rgba = color.astype(np.float32) / 255.0
    alpha = rgba[..., 3]
    if isinstance(background, np.ndarray) and background.ndim == 3:
        bg = background.astype(np.float32)
    else:
        bg = np.broadcast_to(np.asarray(background, np.float32), rgba[..., :3].shape)
    # pyrender's RGBA output is premultiplied: its multisample resolve averages the covered
    # samples' colours with the transparent clear colour, so an edge pixel holds alpha * colour.
    rgb = rgba[..., :3] + bg * (1.0 - alpha[..., None])
    depth = depth.astype(np.float32)
    return ShadedImage(rgb=np.clip(rgb, 0.0, 1.0), depth=depth, mask=alpha >= 0.5, alpha=alpha)


@functools.lru_cache(maxsize=1)
def _light_ordered_scene(pyrender):
    """Return a pyrender.Scene subclass whose `light_nodes` come in the order of their names.

    pyrender keeps light nodes in sets and binds them to the shader in set order, which follows
    the nodes' memory addresses; the shader sums the lights in that order, so the same view
    rendered twice could differ by one grey level in single pixels (measured: 1 pixel of 240
    training views), enough to make U-Net training runs with the same seed diverge."""

    class LightOrderedScene(pyrender.Scene):
        @property
        def light_nodes(self):
            return sorted(super().light_nodes, key=lambda node: node.name or "")

    return LightOrderedScene


def random_material(rng: np.random.Generator) -> Material:
    """Return a material with a random colour (any hue), metallic and roughness."""
    return Material(base_color=tuple(rng.uniform(0.05, 0.95, size=3).tolist()),
                    metallic=float(rng.uniform(0.0, 0.6)),
                    roughness=float(rng.uniform(0.25, 0.95)))


def random_lighting(rng: np.random.Generator) -> Lighting:
    """Return 1-3 directional lights from the camera's hemisphere and a random ambient term."""
    lights = []
    for _ in range(int(rng.integers(1, 4))):
        d = rng.normal(size=3)
        d[2] = abs(d[2]) + 0.3  # shine away from the camera onto the visible side
        lights.append(Light(tuple(d.tolist()), tuple(rng.uniform(0.7, 1.0, 3).tolist()),
                            float(rng.uniform(1.0, 5.0))))
    return Lighting(ambient=float(rng.uniform(0.1, 0.6)), lights=tuple(lights))


def random_background(rng: np.random.Generator, height: int, width: int,
                      images: list[np.ndarray] | None = None) -> np.ndarray:
    """Return an (H, W, 3) float32 background in [0, 1]: a flat colour, a smooth gradient, noise
    at a random scale, or (when `images` are given) a random crop of one of them."""
    kinds = ["flat", "gradient", "noise"] + (["image"] if images else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "flat":
        return np.broadcast_to(rng.uniform(0, 1, 3).astype(np.float32),
                               (height, width, 3)).copy()
    if kind == "gradient":
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)
    if kind == "noise":
        cell = int(rng.integers(2, 33))
        small = rng.uniform(0, 1, (height // cell + 2, width // cell + 2, 3))
        from scipy.ndimage import zoom

        big = zoom(small, (cell, cell, 1), order=1)[:height, :width]
        return np.clip(big + rng.normal(0, 0.03, big.shape), 0, 1).astype(np.float32)
    assert images  # "image" is one of the kinds only when images are given
    img = images[int(rng.integers(len(images)))]
    h, w = img.shape[:2]
    if h < height or w < width:
        from scipy.ndimage import zoom

        s = max(height / h, width / w)
        img = zoom(img, (s, s, 1), order=1)
        h, w = img.shape[:2]
    y0, x0 = int(rng.integers(0, h - height + 1)), int(rng.integers(0, w - width + 1))
    return img[y0:y0 + height, x0:x0 + width].astype(np.float32)


def parse_colour(text: str) -> tuple[float, float, float]:
    """Return the RGB triple of "r,g,b" (each in [0, 1]); RenderError otherwise."""
    try:
        rgb = tuple(float(x) for x in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= x <= 1.0 for x in rgb):
        raise RenderError(f"--color must be three numbers in [0, 1], got {text}")
    return (rgb[0], rgb[1], rgb[2])


def render_view(vertices: np.ndarray, faces: np.ndarray, units_to_metres: float, pose: Pose,
                camera: CameraIntrinsics, colour: tuple[float, float, float] | None,
                seed: int, background: np.ndarray | None = None) -> ShadedImage:
    """Return a photo-like view of a mesh (vertices (V, 3) in its units, scaled to metres by
    `units_to_metres`; faces (F, 3)) over a random background, in `colour` (RGB in [0, 1]; None:
    random), both drawn from `seed`; RenderError if no pixel shows the mesh. `background`
    (h, w, 3) float in [0, 1], e.g. a photo: used instead of the random one, scaled to cover
    the image and cut about its centre (`clutter.cover_crop`)."""
    rng = np.random.default_rng(seed)
    rgb = tuple(rng.uniform(0.15, 0.9, 3).tolist()) if colour is None else colour
    if background is None:
        backdrop = random_background(rng, camera.height, camera.width)
    else:
        from regtool.render.clutter import cover_crop

        backdrop = cover_crop(background, camera.height, camera.width)
    shaded = render_shaded(np.asarray(vertices) * units_to_metres, faces, pose, camera,
                           material=Material(rgb, 0.1, 0.6), background=backdrop)
    if not shaded.mask.any():
        raise RenderError("the mesh is not visible with this camera and pose")
    return shaded
