"""Contact sheets: one PNG per category showing every mesh rendered headless with pyrender."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from regtool.data.manifest import Manifest
from regtool.geometry.camera import CameraIntrinsics, Pose
from regtool.geometry.mesh import load_mesh
from regtool.io import write_atomic


def render_tile(mesh, size: int, radius: float) -> np.ndarray:
    """Return an (size, size, 3) float image of the mesh seen from the front-right, above."""
    from regtool.render.shading import Material, render_shaded

    camera = CameraIntrinsics.from_fov(size, size, 30.0)
    distance = 0.85 * radius / np.tan(np.radians(15.0))
    pose = Pose.look_at(distance, azimuth_deg=35.0, elevation_deg=20.0)
    return render_shaded(mesh.vertices, mesh.faces, pose, camera,
                         material=Material((0.55, 0.62, 0.75), 0.1, 0.5),
                         background=(1.0, 1.0, 1.0)).rgb


def write_contact_sheets(root: Path, manifest: Manifest, tile: int = 160,
                         progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write `root/<category>/contact_sheet.png` for every category; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for c in manifest.categories.values():
        entries = [("canonical", c.canonical)] + [("train", e) for e in c.train] + \
                  [("test", t.mesh) for t in c.test]
        meshes = [(kind, e.name, load_mesh(root / e.path)) for kind, e in entries]
        radius = max(np.linalg.norm(m.vertices, axis=1).max() for _, _, m in meshes)
        cols = min(7, len(meshes))
        rows = -(-len(meshes) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols * tile / 80, rows * tile / 80 + 0.4),
                                 dpi=80, squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (kind, name, mesh) in zip(axes.ravel(), meshes):
            ax.imshow(render_tile(mesh, tile, radius))
            color = {"canonical": "tab:red", "train": "black", "test": "tab:blue"}[kind]
            ax.set_title(name.replace(f"{c.name}_", ""), fontsize=8, color=color)
        fig.suptitle(f"{c.name}: canonical (red), train (black), test (blue); "
                     f"{len(meshes[0][2].vertices)} vertices in the canonical", fontsize=9)
        path = root / c.name / "contact_sheet.png"
        write_atomic(path, partial(fig.savefig, format="png"))
        plt.close(fig)
        paths.append(path)
        if progress:
            progress(f"{c.name}/contact_sheet.png")
    return paths
