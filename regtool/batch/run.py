"""`regtool register-batch`: many registrations on an executor, resumable, one summary.

Every job's output is `DIR/<job id>/`, written by `registration.job.register_job` exactly as
`regtool register` writes it (published as a whole: a folder holds a finished job or nothing
new). `DIR/summary.csv` (job, status, loss, seconds, error, node, attempts, track) is rewritten
atomically after every job, so it always lists each job once: "ok", "failed" (with the error's
one line) or "pending". A job whose `DIR/<job id>/result.json` exists counts as finished and is
skipped on a re-run; failed jobs run again.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regtool.batch.executor import Executor, worker_cache
from regtool.batch.jobs import BatchJob

SUMMARY_CSV = "summary.csv"
SUMMARY_FIELDS = ("job", "status", "loss", "seconds", "error", "node", "attempts", "track")
_MODEL_CACHE_SIZE = 4  # (shape space, U-Net) pairs a worker keeps loaded


@dataclass(frozen=True)
class JobTask:
    """What a worker gets for one job: the job, its output folder, the device, and in sequence
    mode the start state (latent code, pose dicts per view) of the track's previous job."""

    job: BatchJob
    out: str
    device: str
    start_code: tuple[float, ...] | None = None
    start_poses: tuple[dict, ...] | None = None


@dataclass
class BatchSummary:
    """The rows of summary.csv (file order) and how many jobs ran, failed and were skipped."""

    rows: list[dict[str, Any]]
    ran: int = 0
    failed: int = 0
    skipped: int = 0
    path: Path | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)


def _models(job: BatchJob, device):
    """Return (ShapeSpace, UNet) of `job`, loaded once per worker (keyed by path, size and
    modification time, so a replaced file is loaded again)."""
    from regtool.registration.pipeline import load_models

    def stamp(p: Path) -> tuple:
        st = Path(p).stat()
        return str(p), st.st_size, st.st_mtime_ns

    cache = worker_cache().setdefault("models", {})
    key = (stamp(job.shapespace) if job.shapespace.exists() else str(job.shapespace),
           stamp(job.unet) if job.unet.exists() else str(job.unet), str(device))
    if key not in cache:
        while len(cache) >= _MODEL_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = load_models(job.shapespace, job.unet, device)
    return cache[key]


def run_job(task: JobTask) -> dict[str, Any]:
    """Run one job in a worker; return {"status": "ok" | "failed", "loss" (best loss), "seconds",
    "error" (one line), "z" (list), "poses" (final pose dicts per view)}. Every exception of
    the job becomes a "failed" record: one bad job never stops the batch."""
    import numpy as np

    from regtool.device import resolve_device
    from regtool.errors import RegtoolError
    from regtool.geometry.camera import Pose
    from regtool.registration.job import register_job

    t0 = time.perf_counter()
    job = task.job
    try:
        device = resolve_device(task.device)
        models = _models(job, device)
        start_poses = None if task.start_poses is None else \
            [Pose.from_dict(p, source=f"start pose of job {job.id}") for p in task.start_poses]
        start_code = None if task.start_code is None else np.asarray(task.start_code)
        output = register_job(Path(task.out) / job.id, job.shapespace, job.unet, job.inputs,
                              job.config, device, models=models, start_code=start_code,
                              start_poses=start_poses)
    except Exception as exc:  # noqa: BLE001 - recorded, the batch goes on
        message = str(exc) if isinstance(exc, RegtoolError) else \
            f"{type(exc).__name__}: {exc}"
        return {"status": "failed", "loss": None, "seconds": time.perf_counter() - t0,
                "error": " ".join(message.split()), "z": None, "poses": None}
    record = json.loads((Path(task.out) / job.id / "result.json").read_text(encoding="utf-8"))
    return {"status": "ok", "loss": output.result.best_loss,
            "seconds": time.perf_counter() - t0, "error": "", "z": record["z"],
            "poses": [v["pose"] for v in record["views"]]}


def finished_state(out: Path, job_id: str) -> dict[str, Any] | None:
    """Return {"loss", "seconds", "z", "poses"} of a job finished in `out` (its result.json),
    or None when it has not finished."""
    path = Path(out) / job_id / "result.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {"loss": record["best_loss"], "seconds": record["timings"].get("total"),
                "z": record["z"], "poses": [v["pose"] for v in record["views"]]}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: run the job again


def read_summary(path: Path) -> dict[str, dict[str, str]]:
    """Return the rows of an existing summary.csv by job id ({} if there is none or it is not
    readable)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return {r["job"]: r for r in csv.DictReader(fh) if r.get("job")}
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}


def summary_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Return summary.csv's content: a header of SUMMARY_FIELDS and one line per row (loss with
    8 significant digits, seconds with 2 decimals, empty for none)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = dict(row)
        if isinstance(out.get("loss"), float):
            out["loss"] = f"{out['loss']:.8g}"
        if isinstance(out.get("seconds"), float):
            out["seconds"] = f"{out['seconds']:.2f}"
        writer.writerow({k: "" if out.get(k) is None else out[k] for k in SUMMARY_FIELDS})
    return buf.getvalue().encode("utf-8")


def run_batch(jobs: list[BatchJob], out: Path, executor: Executor, device: str = "cpu",
              progress: Callable[[str, dict[str, Any]], None] | None = None,
              on_total: Callable[[int], None] | None = None) -> BatchSummary:
    """Run the jobs not finished in `out` on `executor` and return the summary (also written to
    `out/summary.csv` after every job). Jobs sharing a track run one after another in file
    order, each from the state of the track's last successful job before it; other jobs run
    as workers become free. `on_total(n)` gets the number of jobs to run before the first one
    starts; `progress(job id, row)` is called as each ends. OutputError if `out` cannot be
    written."""
    from regtool.io import check_output_dir, ensure_writable_dir, write_bytes_atomic

    out = Path(out).resolve()
    check_output_dir(out)
    ensure_writable_dir(out)
    summary_path = out / SUMMARY_CSV
    previous = read_summary(summary_path)
    rows: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[BatchJob]] = {}
    state: dict[str, dict[str, Any] | None] = {}  # track -> last successful job's state
    summary = BatchSummary([], path=summary_path)
    for job in jobs:
        groups.setdefault(job.track if job.track is not None else f"\0{job.id}", []).append(job)
        finished = finished_state(out, job.id)
        old = previous.get(job.id, {})
        if finished is not None:
            summary.skipped += 1
            rows[job.id] = {"job": job.id, "status": "ok", "loss": finished["loss"],
                            "seconds": old.get("seconds") or finished["seconds"], "error": "",
                            "node": old.get("node", ""), "attempts": old.get("attempts", ""),
                            "track": job.track or "", "_state": finished}
        else:
            rows[job.id] = {"job": job.id, "status": "pending", "track": job.track or ""}
    queues = {key: list(group) for key, group in groups.items()}

    def write_summary() -> None:
        write_bytes_atomic(summary_path, summary_bytes([rows[j.id] for j in jobs]))

    def submit_next(key: str) -> None:
        """Submit the group's next unfinished job (passing its finished ones)."""
        queue = queues[key]
        while queue:
            job = queue.pop(0)
            row = rows[job.id]
            if row["status"] == "ok":
                state[key] = row["_state"]
                continue
            start = state.get(key) if job.track is not None else None
            task = JobTask(job, str(out), device,
                           tuple(start["z"]) if start else None,
                           tuple(start["poses"]) if start else None)
            tickets[executor.submit(run_job, task)] = (key, job)
            return

    tickets: dict[int, tuple[str, BatchJob]] = {}
    if on_total is not None:
        on_total(sum(r["status"] == "pending" for r in rows.values()))
    write_summary()
    for key in queues:
        submit_next(key)
    while tickets:
        for done in executor.wait():
            key, job = tickets.pop(done.ticket)
            value = done.value if done.error is None else {
                "status": "failed", "loss": None, "seconds": None, "z": None, "poses": None,
                "error": " ".join(f"worker lost: {type(done.error).__name__}: "
                                  f"{done.error}".split())[:500]}
            row = {"job": job.id, "status": value["status"], "loss": value["loss"],
                   "seconds": value["seconds"], "error": value["error"], "node": done.node,
                   "attempts": done.attempts, "track": job.track or ""}
            summary.ran += 1
            if value["status"] == "ok":
                row["_state"] = state[key] = {"z": value["z"], "poses": value["poses"]}
            else:
                summary.failed += 1
                summary.failures.append((job.id, str(value["error"])))
            rows[job.id] = row
            write_summary()
            if progress is not None:
                progress(job.id, row)
            submit_next(key)
    summary.rows = [{k: v for k, v in rows[j.id].items() if not k.startswith("_")}
                    for j in jobs]
    return summary
