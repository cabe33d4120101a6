"""A jobs file made from a dataset, for the tests, the benchmark and the cluster demo of
`regtool register-batch`: observations of test instances rendered at seeded poses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from regtool.geometry.camera import CameraIntrinsics, Pose


def write_demo_jobs(dataset_root: Path, category: str, out_dir: Path, count: int, *,
                    width: int = 160, height: int = 120, fov_y_deg: float = 40.0,
                    distance: float = 0.6, seed: int = 0, track_length: int = 0,
                    step_deg: float = 4.0) -> Path:
    """Write `count` jobs into `out_dir` (images/, masks/, poses/, camera.json, jobs.jsonl) and
    return the jobs file. Job k observes test instance k mod n of `category` (photo-like, random
    colour and background from `seed` + k) from a seeded viewpoint `distance` metres away; its
    pose file is the true pose. With `track_length` > 0 the jobs form tracks of that many
    frames ("track_<t>"): the viewpoint turns by `step_deg` degrees of azimuth per frame (a
    video of one object), later frames giving no pose."""
    import imageio.v3 as iio

    from regtool.data.dataset import load_category
    from regtool.io import write_bytes_atomic
    from regtool.render.shading import render_view
    from regtool.units import UNITS_TO_METRES

    out_dir = Path(out_dir)
    for sub in ("images", "masks", "poses"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    data = load_category(Path(dataset_root), category)
    camera = CameraIntrinsics.from_fov(width, height, fov_y_deg)
    (out_dir / "camera.json").write_text(json.dumps(camera.to_dict()) + "\n")
    rng = np.random.default_rng(seed)
    lines = []
    azimuth = elevation = 0.0
    for k in range(count):
        frame = k % track_length if track_length > 0 else 0
        if frame == 0:
            azimuth, elevation = float(rng.uniform(0, 360)), float(rng.uniform(15, 35))
        else:
            azimuth += step_deg
        test = data.test[(k // track_length if track_length > 0 else k) % len(data.test)]
        pose = Pose.look_at(distance, azimuth_deg=azimuth, elevation_deg=elevation)
        shaded = render_view(test.mesh.vertices, test.mesh.faces, UNITS_TO_METRES[data.units],
                             pose, camera, None, seed + k)
        job_id = f"job_{k:04d}"
        write_bytes_atomic(out_dir / "images" / f"{job_id}.png", iio.imwrite(
            "<bytes>", (shaded.rgb * 255).round().astype(np.uint8), extension=".png"))
        write_bytes_atomic(out_dir / "masks" / f"{job_id}.png", iio.imwrite(
            "<bytes>", shaded.mask.astype(np.uint8) * 255, extension=".png"))
        (out_dir / "poses" / f"{job_id}.json").write_text(json.dumps(pose.to_dict()) + "\n")
        line: dict = {"id": job_id, "image": f"images/{job_id}.png", "camera": "camera.json",
                      "mask": f"masks/{job_id}.png"}
        if track_length > 0:
            line["track"] = f"track_{k // track_length}"
        if frame == 0:
            line["pose"] = f"poses/{job_id}.json"
        lines.append(json.dumps(line))
    jobs = out_dir / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")
    return jobs
