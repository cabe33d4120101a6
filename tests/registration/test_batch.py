"""`regtool register-batch` on a local Ray (num_cpus=2) and the local executor: the same numbers
as `regtool register`, a failing job isolated, re-runs skipping finished jobs, sequence mode,
and a bad jobs file refused in one line."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
from clitools import config_toml, one_line_error
from typer.testing import CliRunner

from regtool.cli import app

pytestmark = pytest.mark.gl
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for the module (the executors join it)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def batch_dir(dataset_dir, quick_config, bottle_artifacts, tmp_path_factory) -> Path:
    """Four jobs on bottle test views (2 independent, one track of 2 frames) plus two bad ones
    (a missing image, a pose that shows nothing), a 3-iteration config."""
    from regtool.batch.demo import write_demo_jobs

    d = tmp_path_factory.mktemp("batch")
    cfg = replace(quick_config, register=replace(quick_config.register, iterations=3))
    (d / "config.toml").write_text(config_toml(cfg))
    jobs = write_demo_jobs(dataset_dir, "bottle", d, 2, width=cfg.unet.image_width,
                           height=cfg.unet.image_height)
    track = write_demo_jobs(dataset_dir, "bottle", d / "video", 2, width=cfg.unet.image_width,
                            height=cfg.unet.image_height, seed=5, track_length=2)
    lines = jobs.read_text().splitlines()
    for line in track.read_text().splitlines():
        job = json.loads(line)
        job["id"] = "video_" + job["id"]
        for key in ("image", "mask", "pose", "camera"):
            if key in job:
                job[key] = "video/" + job[key]
        lines.append(json.dumps(job))
    (d / "far.json").write_text(json.dumps({"rotation": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                            "translation": [0.0, 0.0, -1.0]}))
    lines.append(json.dumps({"id": "missing", "image": "images/none.png",
                             "camera": "camera.json", "pose": "poses/job_0000.json"}))
    lines.append(json.dumps({"id": "behind", "image": "images/job_0001.png",
                             "mask": "masks/job_0001.png", "camera": "camera.json",
                             "pose": "far.json"}))
    (d / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _batch(d: Path, art, out: Path, *extra: str):
    return runner.invoke(app, ["register-batch", "--jobs", str(d / "jobs.jsonl"), "--out",
                               str(out), "--shapespace", str(art["shapespace"]), "--unet",
                               str(art["unet"]), "--config", str(d / "config.toml"), *extra])


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as fh:
        return {r["job"]: r for r in csv.DictReader(fh)}


def _result(folder: Path) -> dict:
    """result.json without what differs between runs (timings, paths of the run)."""
    record = json.loads((folder / "result.json").read_text())
    record.pop("timings")
    for h in record["history"]:
        h.pop("seconds")
    for d in record["descents"]:
        d.pop("seconds", None)
    return record


def test_batch_on_ray_equals_register_and_isolates_failures(batch_dir, bottle_artifacts,
                                                             local_ray, tmp_path):
    out = tmp_path / "out"
    result = _batch(batch_dir, bottle_artifacts, out, "--executor", "ray", "--workers", "2")
    assert result.exit_code == 1, result.output  # two jobs failed, the rest finished
    rows = _summary(out)
    assert list(rows) == ["job_0000", "job_0001", "video_job_0000", "video_job_0001",
                          "missing", "behind"]
    assert {j: r["status"] for j, r in rows.items()} == {
        "job_0000": "ok", "job_0001": "ok", "video_job_0000": "ok", "video_job_0001": "ok",
        "missing": "failed", "behind": "failed"}
    assert "image file not found" in rows["missing"]["error"]
    assert "behind the camera" in rows["behind"]["error"]
    assert not (out / "missing").exists() and not (out / "behind").exists()
    node = local_ray.get_runtime_context().get_node_id()
    assert {r["node"] for r in rows.values()} == {node}
    assert "job missing failed: image file not found" in result.output

    # The same job with `regtool register`: the same files, the same numbers.
    for job in ("job_0000", "job_0001"):
        single = tmp_path / f"single_{job}"
        r = runner.invoke(app, [
            "register", "--shapespace", str(bottle_artifacts["shapespace"]), "--unet",
            str(bottle_artifacts["unet"]), "--image", str(batch_dir / f"images/{job}.png"),
            "--camera", str(batch_dir / "camera.json"), "--pose",
            str(batch_dir / f"poses/{job}.json"), "--mask", str(batch_dir / f"masks/{job}.png"),
            "--out", str(single), "--config", str(batch_dir / "config.toml")])
        assert r.exit_code == 0, r.output
        for name in ("deformed.ply", "deformed.obj", "overlay.png", "optimisation.gif"):
            assert (out / job / name).read_bytes() == (single / name).read_bytes(), name
        assert _result(out / job) == _result(single)
        assert float(rows[job]["loss"]) == pytest.approx(
            json.loads((single / "result.json").read_text())["best_loss"], rel=1e-7)

    # Sequence mode: the second frame starts from the first frame's code and final pose.
    first, second = _result(out / "video_job_0000"), _result(out / "video_job_0001")
    assert [d["start"] for d in second["descents"]] == ["given code"]
    assert second["views"][0]["initial_pose"] == first["views"][0]["pose"]

    # The local executor (process pool) gives the same numbers for every job.
    local = tmp_path / "local"
    r = _batch(batch_dir, bottle_artifacts, local, "--executor", "local", "--workers", "2")
    assert r.exit_code == 1, r.output
    for job in ("job_0000", "job_0001", "video_job_0000", "video_job_0001"):
        assert _result(local / job) == _result(out / job), job
        assert (local / job / "deformed.ply").read_bytes() == \
            (out / job / "deformed.ply").read_bytes()

    # Re-running skips the finished jobs (their files untouched) and runs the failed ones.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "job_0000").iterdir()}
    again = _batch(batch_dir, bottle_artifacts, out, "--executor", "ray", "--workers", "2")
    assert again.exit_code == 1, again.output
    assert "4 finished earlier (skipped)" in again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "job_0000").iterdir()} == stamps
    assert _summary(out)["job_0000"] == rows["job_0000"]
    # A track resumed in the middle starts from its finished frame, as in one run.
    import shutil

    shutil.rmtree(out / "video_job_0001")
    resumed = _batch(batch_dir, bottle_artifacts, out, "--executor", "local", "--workers", "1")
    assert "3 finished earlier" in resumed.output
    assert _result(out / "video_job_0001") == second


def test_bad_jobs_file_is_one_line(batch_dir, bottle_artifacts, tmp_path):
    cases = {
        "not json": ("{oops", "not valid JSON"),
        "no id": ('{"image": "a.png", "camera": "c.json", "pose": "p.json"}', "'id'"),
        "bad id": ('{"id": "../x", "image": "a.png", "camera": "c.json", "pose": "p.json"}',
                   "'id'"),
        "unknown key": ('{"id": "a", "image": "a.png", "camera": "c.json", "pose": "p.json", '
                        '"colour": 1}', "unknown key"),
        "no pose": ('{"id": "a", "image": "a.png", "camera": "c.json"}', "missing 'pose'"),
        "bad override": ('{"id": "a", "image": "a.png", "camera": "c.json", "pose": "p.json", '
                         '"overrides": {"register": {"iterations": -4}}}', "iterations"),
        "twice": ('{"id": "a", "image": "a.png", "camera": "c.json", "pose": "p.json"}\n'
                  '{"id": "a", "image": "b.png", "camera": "c.json", "pose": "p.json"}',
                  "used twice"),
        "empty": ("\n# nothing\n", "holds no job"),
    }
    for name, (text, fragment) in cases.items():
        jobs = tmp_path / f"{name}.jsonl"
        jobs.write_text(text + "\n")
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        result = runner.invoke(app, ["register-batch", "--jobs", str(jobs), "--out", str(out),
                                     "--shapespace", str(bottle_artifacts["shapespace"]),
                                     "--unet", str(bottle_artifacts["unet"])])
        one_line_error(result, fragment)
        assert not out.exists(), name
    result = runner.invoke(app, ["register-batch", "--jobs", str(tmp_path / "none.jsonl"),
                                 "--out", str(tmp_path / "o")])
    one_line_error(result, "jobs file not found")
    result = runner.invoke(app, ["register-batch", "--jobs", str(batch_dir / "jobs.jsonl"),
                                 "--out", str(tmp_path / "o"), "--executor", "spark",
                                 "--shapespace", str(bottle_artifacts["shapespace"]),
                                 "--unet", str(bottle_artifacts["unet"])])
    one_line_error(result, "unknown executor 'spark'")
