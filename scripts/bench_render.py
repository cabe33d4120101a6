"""Benchmark of the differentiable renderer (StilllebenDR, Fig. 3): icospheres of ~10k, 40k,
160k and 640k vertices at 1024 x 1024.

Per mesh size, in a fresh worker process (so the peak memory is that size's own), interleaved
repeats of
* floor: pyrender's own plain forward render of the same mesh at the same size (scene built and
  uploaded once, as any OpenGL forward at best), `OffscreenRenderer.render`;
* forward: `diff_render` of vertices that require grad (G-buffer pass + torch shading);
* backward: `loss.backward()` of the mean squared error to a fixed target image, down to the
  vertex gradients (Sobel field + Jacobian scatter + the shading-normal term).
Reported: medians in milliseconds, forward + backward, ratios to the floor, peak RSS of the
worker (MiB) and, on CUDA, peak CUDA memory. The bar (issue 4), checked at ~160k vertices:
forward + backward <= 2 x floor and backward <= 0.5 x forward.

    .venv/bin/python scripts/bench_render.py [--device cpu|cuda] [--out bench_results/]

Writes `bench_render.json` and `bench_render.md` into `--out` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

SUBDIVISIONS = {"10k": 5, "40k": 6, "160k": 7, "640k": 8}


def _worker(args: argparse.Namespace) -> dict:
    import numpy as np
    import pyrender
    import torch
    import trimesh

    import regtool.render  # noqa: F401  (PyOpenGL platform first)
    from regtool.geometry.camera import CV_TO_GL, CameraIntrinsics
    from regtool.render.context import get_context
    from regtool.render.diff import DiffRenderSettings, diff_render

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = args.resolution
    camera = CameraIntrinsics.from_fov(size, size, 40.0)
    mesh = trimesh.creation.icosphere(subdivisions=args.subdivisions, radius=0.1)
    offset = np.array([0.0, 0.0, 0.4])
    vertices = torch.as_tensor(np.asarray(mesh.vertices) + offset, dtype=torch.float32,
                               device=device)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)
    settings = DiffRenderSettings(image_type=args.image_type)

    # pyrender's floor: the same mesh in the camera frame, a light, the same intrinsics.
    ctx = get_context(size, size)
    scene = pyrender.Scene(ambient_light=np.full(3, 0.3))
    cam_mesh = trimesh.Trimesh(np.asarray(mesh.vertices) + offset, mesh.faces, process=False)
    scene.add(pyrender.Mesh.from_trimesh(cam_mesh, smooth=True), pose=np.eye(4))
    cam_pose = np.eye(4)
    cam_pose[:3, :3] = CV_TO_GL
    scene.add(pyrender.IntrinsicsCamera(camera.fx, camera.fy, camera.cx, camera.cy,
                                        znear=0.01, zfar=100.0), pose=cam_pose)
    scene.add(pyrender.DirectionalLight(intensity=3.0), pose=np.eye(4))

    def floor() -> None:
        ctx.renderer.render(scene)

    with torch.no_grad():
        target, _ = diff_render(vertices + torch.tensor([0.01, -0.01, 0.0], device=device),
                                faces, camera, settings)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward_backward() -> tuple[float, float]:
        v = vertices.clone().requires_grad_(True)
        sync()
        t0 = time.perf_counter()
        image, _ = diff_render(v, faces, camera, settings)
        sync()
        t1 = time.perf_counter()
        loss = ((image - target) ** 2).mean()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        assert v.grad is not None and bool(torch.isfinite(v.grad).all())
        return t1 - t0, t2 - t1

    floor()
    forward_backward()  # warm-up: GL objects, shader compilation, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_floor, t_fwd, t_bwd = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        floor()
        t_floor.append(time.perf_counter() - t0)
        f, b = forward_backward()
        t_fwd.append(f)
        t_bwd.append(b)
    med = lambda xs: float(np.median(xs)) * 1000.0  # noqa: E731
    fwd, bwd, flo = med(t_fwd), med(t_bwd), med(t_floor)
    both = med(np.add(t_fwd, t_bwd))
    result = {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
              "resolution": size, "coverage": float(target.shape[-1] and
                                                    (target.sum(0) > 0).float().mean()),
              "floor_ms": flo, "forward_ms": fwd, "backward_ms": bwd,
              "forward_backward_ms": both,
              "fb_over_floor": both / flo, "backward_over_forward": bwd / fwd,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
              "repeats": args.repeats}
    if device.type == "cuda":
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return result


def _markdown(report: dict) -> str:
    lines = [f"# Differentiable renderer benchmark ({report['device']}, "
             f"{report['resolution']}x{report['resolution']}, image type "
             f"{report['image_type']})", "",
             f"GL: {report['gl']}; torch {report['torch']}, {report['threads']} intra-op "
             f"thread(s); {report['cpus']} CPUs, 1-min load average at the end "
             f"{report['load_average_1min']:.1f}; median of {report['repeats']} interleaved "
             f"repeats; times in ms.", "",
             "| vertices | faces | pyrender floor | forward | backward | fwd+bwd | "
             "fwd+bwd / floor | bwd / fwd | peak RSS MiB |" + (
                 " peak CUDA MiB |" if report["device"] == "cuda" else ""),
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + (
                 "---:|" if report["device"] == "cuda" else "")]
    for r in report["rows"]:
        row = (f"| {r['vertices']} | {r['faces']} | {r['floor_ms']:.1f} | {r['forward_ms']:.1f} "
               f"| {r['backward_ms']:.1f} | {r['forward_backward_ms']:.1f} | "
               f"{r['fb_over_floor']:.2f} | {r['backward_over_forward']:.2f} | "
               f"{r['peak_rss_mib']:.0f} |")
        if report["device"] == "cuda":
            row += f" {r.get('peak_cuda_mib', 0):.0f} |"
        lines.append(row)
    bar = report.get("bar")
    if bar:
        lines += ["", f"Bar at {bar['vertices']} vertices: fwd+bwd / floor = "
                  f"{bar['fb_over_floor']:.2f} (<= 2: {'PASS' if bar['fb_ok'] else 'FAIL'}), "
                  f"bwd / fwd = {bar['backward_over_forward']:.2f} (<= 0.5: "
                  f"{'PASS' if bar['bwd_ok'] else 'FAIL'})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--sizes", nargs="+", default=list(SUBDIVISIONS),
                        choices=list(SUBDIVISIONS))
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--image-type", default="rgb", choices=("rgb", "normals", "mask"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in the workers (0: torch's default). One "
                             "by default: on a small shared CPU, OpenMP barriers of every op "
                             "stall when other processes hold the cores")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--subdivisions", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return

    import torch

    import regtool.render  # noqa: F401
    from regtool.io import write_bytes_atomic, write_json_atomic

    rows = []
    for name in args.sizes:
        cmd = [sys.executable, __file__, "--worker", "--subdivisions",
               str(SUBDIVISIONS[name]), "--device", args.device, "--resolution",
               str(args.resolution), "--repeats", str(args.repeats), "--image-type",
               args.image_type, "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"worker for {name} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['vertices']:>7} vertices: floor {row['floor_ms']:.1f} ms, forward "
              f"{row['forward_ms']:.1f} ms, backward {row['backward_ms']:.1f} ms, fwd+bwd "
              f"{row['forward_backward_ms']:.1f} ms ({row['fb_over_floor']:.2f}x floor), "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
    gl = subprocess.run([sys.executable, "-c", "import regtool.render; from regtool.render."
                         "context import get_context; i = get_context().info(); "
                         "print(i['renderer'], '|', i['version'])"],
                        capture_output=True, text=True).stdout.strip()
    report = {"device": args.device, "resolution": args.resolution,
              "image_type": args.image_type, "repeats": args.repeats, "gl": gl,
              "torch": torch.__version__,
              "threads": args.threads or torch.get_num_threads(),
              "machine": platform.platform(), "cpus": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "rows": rows}
    at = [r for r in rows if 150_000 <= r["vertices"] <= 170_000]
    if at:
        r = at[0]
        report["bar"] = {"vertices": r["vertices"], "fb_over_floor": r["fb_over_floor"],
                         "backward_over_forward": r["backward_over_forward"],
                         "fb_ok": r["fb_over_floor"] <= 2.0,
                         "bwd_ok": r["backward_over_forward"] <= 0.5}
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    write_json_atomic(args.out / f"bench_render{suffix}.json", report)
    write_bytes_atomic(args.out / f"bench_render{suffix}.md", _markdown(report).encode())
    print(_markdown(report))


if __name__ == "__main__":
    main()
