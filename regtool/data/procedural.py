"""Procedural object categories: bottle, camera, drill, spray.

Each category is a signed distance function of a few shape parameters (part proportions,
curvatures, offsets, some acting non-linearly), meshed by marching cubes (scikit-image) into a
watertight, consistently oriented triangle mesh in metres, in one category frame (z up; for the
camera and the drill +x is the viewing / working direction). The canonical instance uses the
middle of every parameter range; training and test instances draw parameters uniformly from
the ranges with a seeded `numpy.random.Generator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh

from regtool.data import sdf
from regtool.errors import DatasetError, MeshError

ParamRanges = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class CategorySpec:
    """A category: parameter ranges, the SDF builder and the meshing box (metres)."""

    name: str
    ranges: ParamRanges
    build: Callable[[dict[str, float]], Callable[[np.ndarray], np.ndarray]]
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    description: str


# --- bottle: body, shoulder, neck (+ lip) ------------------------------------------------------
BOTTLE: ParamRanges = {
    "body_radius": (0.028, 0.044),
    "body_height": (0.11, 0.19),
    "waist": (-0.14, 0.10),  # relative radius change around `waist_at` (concave / convex)
    "waist_at": (0.35, 0.7),
    "shoulder_height": (0.025, 0.065),
    "shoulder_power": (0.9, 2.6),  # 1: conical shoulder, 2: round, >2: boxy
    "neck_radius": (0.011, 0.017),
    "neck_height": (0.02, 0.05),
    "lip": (0.0, 0.004),
}


def _bottle(q: dict[str, float]) -> Callable[[np.ndarray], np.ndarray]:
    rb, hb, nr = q["body_radius"], q["body_height"], q["neck_radius"]
    hs, hn, pw = q["shoulder_height"], q["neck_height"], q["shoulder_power"]
    top = hb + hs + hn

    def radius(z: np.ndarray) -> np.ndarray:
        body = rb * (1.0 + q["waist"] * np.exp(-((z / hb - q["waist_at"]) / 0.22) ** 2))
        s = np.clip((z - hb) / hs, 0.0, 1.0)
        shoulder = nr + (rb - nr) * (1.0 - s ** pw) ** (1.0 / pw)
        neck = nr + q["lip"] * np.exp(-((z - (top - 0.006)) / 0.003) ** 2)
        return np.where(z < hb, body, np.where(z < hb + hs, shoulder, neck))

    return lambda p: sdf.revolve_z(p, radius, 0.0, top, rounding=0.004)


# --- camera: body, lens, grip (+ viewfinder hump) ----------------------------------------------
CAMERA: ParamRanges = {
    # Most of the variation is in the body and the lens, as in real camera categories; the
    # smaller parts vary less. With all eleven parameters over ranges of similar relative size,
    # a 5-d shape space could not express the test instances (even the latent fit to their
    # true 3D points reduced the canonical's error by only 31% on six instances; 59% now).
    "body_width": (0.10, 0.15),
    "body_height": (0.062, 0.098),
    "body_depth": (0.035, 0.065),
    "body_rounding": (0.006, 0.010),
    "lens_radius": (0.017, 0.032),
    "lens_length": (0.02, 0.08),
    "lens_taper": (0.92, 1.05),  # front radius / back radius
    "lens_offset_y": (-0.01, 0.0),
    "grip_width": (0.022, 0.028),
    "grip_depth": (0.014, 0.022),
    "hump_height": (0.010, 0.016),
}


def _camera(q: dict[str, float]) -> Callable[[np.ndarray], np.ndarray]:
    w, h, d = q["body_width"], q["body_height"], q["body_depth"]
    rl, ll, taper = q["lens_radius"], q["lens_length"], q["lens_taper"]
    lens_axis = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # local z = +x
    lens_centre = (d / 2 + ll / 2 - 0.002, q["lens_offset_y"], -0.1 * h)
    grip_centre = (d / 2 + q["grip_depth"] / 2 - 0.004, w / 2 - q["grip_width"] / 2, -0.03 * h)
    hump_half = (0.45 * d, 0.018, q["hump_height"] / 2 + 0.006)
    hump_centre = (-0.05 * d, q["lens_offset_y"], h / 2 + q["hump_height"] / 2 - 0.004)

    def lens(p: np.ndarray) -> np.ndarray:
        local = sdf.to_local(p, lens_centre, lens_axis)
        return sdf.revolve_z(local, lambda z: rl * (1 + (taper - 1) * (z / ll + 0.5)),
                             -ll / 2, ll / 2, rounding=0.002)

    def field(p: np.ndarray) -> np.ndarray:
        body = sdf.box(p, (d / 2, w / 2, h / 2), q["body_rounding"])
        grip = sdf.box(sdf.to_local(p, grip_centre),
                       (q["grip_depth"] / 2 + 0.004, q["grip_width"] / 2, 0.45 * h), 0.006)
        hump = sdf.box(sdf.to_local(p, hump_centre), hump_half, 0.005)
        out = sdf.smin(body, grip, 0.006)
        out = sdf.smin(out, hump, 0.006)
        return sdf.smin(out, lens(p), 0.003)

    return field


# --- drill: body, chuck, handle, battery --------------------------------------------------------
DRILL: ParamRanges = {
    "body_radius": (0.024, 0.036),
    "body_length": (0.13, 0.19),
    "chuck_length": (0.028, 0.05),
    "chuck_radius": (0.011, 0.019),
    "handle_length": (0.085, 0.13),
    "handle_thickness": (0.026, 0.038),
    "handle_tilt": (0.05, 0.42),  # radians, leaning back
    "handle_curve": (-4.0, 4.0),  # 1/m, bend of the handle
    "handle_offset": (-0.025, 0.02),
    "battery_length": (0.065, 0.1),
    "battery_height": (0.022, 0.04),
}


def _drill(q: dict[str, float]) -> Callable[[np.ndarray], np.ndarray]:
    rb, lb = q["body_radius"], q["body_length"]
    lc, rc = q["chuck_length"], q["chuck_radius"]
    lh, th, tilt = q["handle_length"], q["handle_thickness"], q["handle_tilt"]
    body_axis = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # local z = +x
    hx = q["handle_offset"] - 0.1 * lb
    handle_top = np.array([hx, 0.0, -0.5 * rb])
    handle_dir = sdf.rotation_y(np.pi + tilt)  # local z points down and back
    handle_centre = handle_top + handle_dir[:, 2] * lh / 2
    handle_bottom = handle_top + handle_dir[:, 2] * lh
    battery_centre = handle_bottom + np.array([0.01, 0.0, -q["battery_height"] / 2 + 0.006])

    def field(p: np.ndarray) -> np.ndarray:
        local = sdf.to_local(p, (0.0, 0.0, 0.0), body_axis)
        body = sdf.revolve_z(local, lambda z: rb * (1.0 - 0.25 * np.clip(-z / lb - 0.3, 0, 1)),
                             -lb / 2, lb / 2, rounding=0.012)
        chuck_local = sdf.to_local(p, (lb / 2 + lc / 2 - 0.004, 0.0, 0.0), body_axis)
        chuck = sdf.revolve_z(chuck_local, lambda z: rc * (1.0 - 0.35 * (z / lc + 0.5)),
                              -lc / 2, lc / 2, rounding=0.003)
        handle_local = sdf.bend_z(sdf.to_local(p, handle_centre, handle_dir), q["handle_curve"])
        handle = sdf.box(handle_local, (th / 2, 0.4 * th, lh / 2 + 0.01), 0.01)
        battery = sdf.box(sdf.to_local(p, battery_centre),
                          (q["battery_length"] / 2, 0.03, q["battery_height"] / 2), 0.006)
        out = sdf.smin(body, chuck, 0.004)
        out = sdf.smin(out, handle, 0.01)
        return sdf.smin(out, battery, 0.008)

    return field


# --- spray: can, cap, nozzle --------------------------------------------------------------------
SPRAY: ParamRanges = {
    "can_radius": (0.022, 0.040),
    "can_height": (0.10, 0.21),
    "dome_height": (0.006, 0.035),
    "cap_radius_ratio": (0.5, 0.8),
    "cap_height": (0.015, 0.05),
    "cap_taper": (0.75, 1.05),
    "nozzle_length": (0.014, 0.03),
    "nozzle_radius": (0.0055, 0.009),
    "nozzle_height": (0.25, 0.8),  # along the cap, from its base
}


def _spray(q: dict[str, float]) -> Callable[[np.ndarray], np.ndarray]:
    rc, hc, hd = q["can_radius"], q["can_height"], q["dome_height"]
    rcap, hcap = rc * q["cap_radius_ratio"], q["cap_height"]
    cap_base = hc + 0.6 * hd
    nozzle_axis = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # local z = +x
    nozzle_z = cap_base + q["nozzle_height"] * hcap
    cap_r_at_nozzle = rcap * (1 + (q["cap_taper"] - 1) * q["nozzle_height"])
    nozzle_centre = (cap_r_at_nozzle + q["nozzle_length"] / 2 - 0.003, 0.0, nozzle_z)

    def can_radius(z: np.ndarray) -> np.ndarray:
        s = np.clip((z - hc) / hd, 0.0, 1.0)
        return rc * np.sqrt(np.clip(1.0 - s ** 2, 0.0, 1.0)) * (1 - 0.4 * s) + 0.4 * s * rcap

    def field(p: np.ndarray) -> np.ndarray:
        can = sdf.revolve_z(p, can_radius, 0.0, hc + hd, rounding=0.003)
        cap = sdf.revolve_z(p, lambda z: rcap * (1 + (q["cap_taper"] - 1) * (z - cap_base) / hcap),
                            cap_base, cap_base + hcap, rounding=0.003)
        nozzle = sdf.revolve_z(sdf.to_local(p, nozzle_centre, nozzle_axis),
                               lambda z: q["nozzle_radius"] + 0 * z,
                               -q["nozzle_length"] / 2, q["nozzle_length"] / 2, rounding=0.0015)
        return sdf.smin(sdf.smin(can, cap, 0.004), nozzle, 0.002)

    return field


CATEGORY_SPECS: dict[str, CategorySpec] = {
    "bottle": CategorySpec("bottle", BOTTLE, _bottle, (-0.055, -0.055, -0.012),
                           (0.055, 0.055, 0.33), "body, shoulder and neck"),
    "camera": CategorySpec("camera", CAMERA, _camera, (-0.045, -0.085, -0.065),
                           (0.14, 0.085, 0.09), "body, lens and grip"),
    "drill": CategorySpec("drill", DRILL, _drill, (-0.17, -0.05, -0.24),
                          (0.17, 0.05, 0.05), "handle, body and chuck"),
    "spray": CategorySpec("spray", SPRAY, _spray, (-0.045, -0.045, -0.012),
                          (0.065, 0.045, 0.29), "can, cap and nozzle"),
}


# Rotational symmetry axes of the generator frames (direction; the axis runs through the
# generator's origin): the bottle and the spray can are solids of revolution about z (the
# spray's small nozzle aside).
SYMMETRY_AXES: dict[str, tuple[float, float, float]] = {"bottle": (0.0, 0.0, 1.0),
                                                        "spray": (0.0, 0.0, 1.0)}
# Mirror planes of the generator frames (normal; the plane runs through the generator's origin):
# the drill and the spray (nozzle included) are symmetric about y = 0. The camera is not (its
# grip sits on one side, its lens off centre), and the bottle's axis already implies its planes.
MIRROR_NORMALS: dict[str, tuple[float, float, float]] = {"drill": (0.0, 1.0, 0.0),
                                                         "spray": (0.0, 1.0, 0.0)}


def canonical_params(category: str) -> dict[str, float]:
    """Return the middle of every parameter range of `category`."""
    return {k: 0.5 * (lo + hi) for k, (lo, hi) in spec_of(category).ranges.items()}


def sample_params(category: str, rng: np.random.Generator) -> dict[str, float]:
    """Return parameters drawn uniformly from the ranges of `category`."""
    return {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in spec_of(category).ranges.items()}


def spec_of(category: str) -> CategorySpec:
    """Return the spec of a built-in category; DatasetError naming the known ones otherwise."""
    if category not in CATEGORY_SPECS:
        raise DatasetError(f"unknown category '{category}' "
                           f"(built-in: {', '.join(CATEGORY_SPECS)})")
    return CATEGORY_SPECS[category]


def weld(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Return `mesh` with coincident vertices merged as `trimesh.load` merges them (within
    `trimesh.tol.merge`) and the faces this collapses removed; `mesh` itself when nothing
    merges.

    Marching cubes emits one vertex per cut grid edge, so where the level set passes exactly
    through a grid point (the camera and drill canonicals) several vertices coincide. Merged
    without removing the collapsed faces (what a plain `trimesh.load` does) the mesh is no longer
    watertight; welded here, it is watertight both as written and as loaded."""
    merged = mesh.copy()
    merged.merge_vertices()
    if len(merged.vertices) == len(mesh.vertices):
        return mesh
    merged.update_faces(merged.nondegenerate_faces())
    merged.remove_unreferenced_vertices()
    return merged


def mesh_sdf(field: Callable[[np.ndarray], np.ndarray], box_min, box_max,
             voxel_size: float) -> trimesh.Trimesh:
    """Return the zero level set of `field` inside the box as a watertight, outward-oriented
    mesh (marching cubes, largest connected component); MeshError if it is not closed."""
    from skimage.measure import marching_cubes

    lo = np.asarray(box_min, float) - 2 * voxel_size
    hi = np.asarray(box_max, float) + 2 * voxel_size
    axes = [np.arange(lo[i], hi[i] + voxel_size, voxel_size) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    values = field(grid.reshape(-1, 3)).reshape(grid.shape[:3])
    # Close the surface at the box boundary so the level set cannot leak out of the grid.
    values[[0, -1], :, :] = values[:, [0, -1], :] = values[:, :, [0, -1]] = voxel_size
    verts, faces, _normals, _values = marching_cubes(values, level=0.0,
                                                     spacing=(voxel_size,) * 3)
    mesh = weld(trimesh.Trimesh(verts + lo, faces, process=False))
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        mesh = max(parts, key=lambda m: len(m.faces))
    if mesh.volume < 0:
        mesh.invert()
    if not mesh.is_watertight or not mesh.is_winding_consistent:
        raise MeshError("procedural mesh is not watertight")
    return mesh


def generate_mesh(category: str, params: dict[str, float], voxel_size: float,
                  offset: np.ndarray | None = None) -> trimesh.Trimesh:
    """Return the mesh of `category` with `params`, translated by `offset` (metres)."""
    spec = spec_of(category)
    mesh = mesh_sdf(spec.build(params), spec.box_min, spec.box_max, voxel_size)
    if offset is not None:
        mesh.apply_translation(offset)
    return mesh
