"""`regtool render-view`: a photo-like rendering of a mesh (e.g. an observation to register)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from regtool.cli.app import app, console, options, reported_errors


@app.command("render-view")
def render_view_command(
    ctx: typer.Context,
    mesh: Path = typer.Option(..., "--mesh", help="Mesh file (metres unless --units)."),
    camera: Path = typer.Option(..., "--camera", help="Camera intrinsics JSON."),
    pose: Path = typer.Option(..., "--pose", help="Object->camera pose JSON."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG to write."),
    units: str = typer.Option("m", "--units", help="Length unit of the mesh: m, cm or mm."),
    color: Optional[str] = typer.Option(None, "--color", help="Object RGB in [0, 1], e.g. "
                                        "0.8,0.2,0.2 (default: random from --seed)."),
    mask_out: Optional[Path] = typer.Option(None, "--mask-out", help="Also write the object "
                                            "mask PNG here."),
    background: Optional[Path] = typer.Option(None, "--background", help="Photo (PNG/JPG) "
                                              "to render over, scaled to cover the image and "
                                              "cut about its centre (default: random)."),
) -> None:
    """Render a mesh photo-like (pyrender, headless) over a random background or a photo."""
    import imageio.v3 as iio
    import numpy as np

    from regtool.errors import RenderError
    from regtool.geometry.mesh import load_mesh
    from regtool.io import check_output_file, write_atomic
    from regtool.registration.inputs import load_image, read_camera, read_pose
    from regtool.render.shading import parse_colour, render_view
    from regtool.units import UNITS_TO_METRES

    with reported_errors(ctx):
        check_output_file(out)
        if mask_out is not None:
            check_output_file(mask_out)
        if units not in UNITS_TO_METRES:
            raise RenderError(f"--units must be one of {', '.join(UNITS_TO_METRES)}")
        rgb = None if color is None else parse_colour(color)
        backdrop = None if background is None else load_image(background, "background")
        m = load_mesh(mesh)
        shaded = render_view(m.vertices, m.faces, UNITS_TO_METRES[units], read_pose(pose),
                             read_camera(camera), rgb, options(ctx).seed, backdrop)
        image = (shaded.rgb * 255).round().astype(np.uint8)
        write_atomic(out, lambda tmp: iio.imwrite(tmp, image, extension=".png"))
        if mask_out is not None:
            mask = shaded.mask.astype(np.uint8) * 255
            write_atomic(mask_out, lambda tmp: iio.imwrite(tmp, mask, extension=".png"))
        console.print(f"wrote {out} ({image.shape[1]}x{image.shape[0]}, "
                      f"{int(shaded.mask.sum())} object pixels)")
