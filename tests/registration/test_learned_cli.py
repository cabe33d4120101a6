"""`regtool train-correspondence` and `regtool register --backward learned` end to end on the
bottle (a tiny network trained for a few steps: these check the plumbing, not the accuracy),
and their bad-input paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clitools import config_toml, one_line_error
from typer.testing import CliRunner

from regtool.cli import app

pytestmark = pytest.mark.gl
runner = CliRunner()

TINY = """
[correspondence]
base_channels = 4
depth = 2
steps = 3
batch_size = 2
pairs_per_view = 2
val_views = 2
val_every = 3
checkpoint_every = 3
"""


@pytest.fixture(scope="module")
def tiny_corr(bottle_artifacts, dataset_dir, quick_config, tmp_path_factory):
    """(checkpoint, config file) of a 3-step tiny correspondence network of the bottle."""
    d = tmp_path_factory.mktemp("corr")
    (d / "tiny.toml").write_text(TINY, encoding="utf-8")
    out = d / "bottle" / "correspondence.pt"
    result = runner.invoke(app, ["--seed", "1", "train-correspondence", "--dataset",
                                 str(dataset_dir), "--category", "bottle", "--shapespace",
                                 str(bottle_artifacts["shapespace"]), "--out", str(out),
                                 "--config", str(d / "tiny.toml")])
    assert result.exit_code == 0, result.output
    return out, d


def test_train_correspondence_writes_checkpoint_and_report(tiny_corr):
    out, d = tiny_corr
    for name in ("correspondence.pt", "correspondence.json", "correspondence_curve.png",
                 "correspondence_samples.png"):
        assert (out.parent / name).is_file(), name
    report = json.loads(out.with_suffix(".json").read_text())
    m = report["metrics"]
    assert report["category"] == "bottle" and m["step"] == 3
    for key in ("val_epe", "test_epe", "val_zero_epe", "test_zero_epe"):
        assert m[key] > 0, key
    assert m["test_ratio"] == pytest.approx(m["test_epe"] / m["test_zero_epe"])
    assert report["test_meshes"] == ["bottle_test_00", "bottle_test_01"]


def test_train_correspondence_resumes(tiny_corr, bottle_artifacts, dataset_dir, tmp_path):
    """--resume continues from the checkpoint's step to the new --steps."""
    import shutil

    out, d = tiny_corr
    copy = tmp_path / "c.pt"
    shutil.copy(out, copy)
    result = runner.invoke(app, ["--seed", "1", "train-correspondence", "--dataset",
                                 str(dataset_dir), "--category", "bottle", "--shapespace",
                                 str(bottle_artifacts["shapespace"]), "--out", str(copy),
                                 "--config", str(d / "tiny.toml"), "--resume", "--steps", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads(copy.with_suffix(".json").read_text())
    assert report["metrics"]["step"] == 4
    assert report["curve"]["val_step"] == [3, 4]


def test_train_correspondence_bad_inputs(bottle_artifacts, dataset_dir, tmp_path):
    base = ["train-correspondence", "--dataset", str(dataset_dir), "--shapespace",
            str(bottle_artifacts["shapespace"])]
    one_line_error(runner.invoke(app, base + ["--category", "spray", "--out",
                                              str(tmp_path / "a.pt")]), "bottle", "spray")
    one_line_error(runner.invoke(app, base + ["--category", "bottle", "--out",
                                              str(tmp_path / "b.pt"), "--resume"]),
                   "no checkpoint")
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


@pytest.fixture(scope="module")
def observation(dataset_dir, quick_config, tmp_path_factory):
    from regtool.geometry.camera import CameraIntrinsics, Pose

    d = tmp_path_factory.mktemp("obs")
    unet = quick_config.unet
    cam = CameraIntrinsics.from_fov(unet.image_width, unet.image_height, 40.0)
    (d / "camera.json").write_text(json.dumps(cam.to_dict()))
    (d / "pose.json").write_text(json.dumps(Pose.look_at(0.6, 30.0, 20.0).to_dict()))
    (d / "config.toml").write_text(config_toml(quick_config))
    result = runner.invoke(app, ["--seed", "2", "render-view", "--mesh",
                                 str(dataset_dir / "bottle/test/bottle_test_00.ply"),
                                 "--camera", str(d / "camera.json"), "--pose",
                                 str(d / "pose.json"), "--out", str(d / "obs.png")])
    assert result.exit_code == 0, result.output
    return d


def _register(art, obs, out, *extra, config=None):
    return runner.invoke(app, [
        "register", "--shapespace", str(art["shapespace"]), "--unet", str(art["unet"]),
        "--image", str(obs / "obs.png"), "--camera", str(obs / "camera.json"), "--pose",
        str(obs / "pose.json"), "--out", str(out), "--config",
        str(config or obs / "config.toml"), *extra])


def test_register_learned_backward(bottle_artifacts, observation, tiny_corr, tmp_path):
    """register --joint --backward learned: the field stage runs first (its summary is the
    first descent), then the feature descent of the code; result.json names the backward."""
    out = tmp_path / "reg"
    result = _register(bottle_artifacts, observation, out, "--joint", "--backward", "learned",
                       "--correspondence", str(tiny_corr[0]))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "result.json").read_text())
    assert record["backward"] == "learned"
    assert record["correspondence"] == str(tiny_corr[0])
    assert record["descents"][0]["start"] == "field stage"
    assert 1 <= record["descents"][0]["iterations"] <= 15
    assert record["timings"]["field"] > 0


def test_register_learned_backward_bad_inputs(bottle_artifacts, observation, tiny_corr,
                                              tmp_path, quick_config):
    one_line_error(_register(bottle_artifacts, observation, tmp_path / "a", "--joint",
                             "--backward", "learned"), "--correspondence")
    one_line_error(_register(bottle_artifacts, observation, tmp_path / "b", "--joint",
                             "--backward", "magic"), "register.backward")
    one_line_error(_register(bottle_artifacts, observation, tmp_path / "c", "--joint",
                             "--backward", "learned", "--correspondence",
                             str(tmp_path / "missing.pt")), "not found")
    for name in ("a", "b", "c"):
        assert not (tmp_path / name).exists()


def test_register_keeps_the_candidate_with_the_lowest_loss(bottle_artifacts, observation,
                                                          tiny_corr, quick_config, tmp_path):
    """register.candidates: one joint registration per named variant from the same start;
    result.json lists every candidate's descents and keeps the one whose loss is lowest."""
    from dataclasses import replace

    names = ("grid", "no-grid", "learned")
    config = replace(quick_config, register=replace(quick_config.register, candidates=names))
    (tmp_path / "c.toml").write_text(config_toml(config))
    out = tmp_path / "reg"
    result = _register(bottle_artifacts, observation, out, "--joint", "--correspondence",
                       str(tiny_corr[0]), config=tmp_path / "c.toml")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "result.json").read_text())
    best: dict[str, float] = {}
    for d in record["descents"]:
        if "descent" in d:  # image-loss descents (the field stage's losses are pixels)
            best[d["candidate"]] = min(best.get(d["candidate"], np.inf), min(d["losses"]))
    assert sorted(best) == sorted(names)
    kept = {d["candidate"] for d in record["descents"] if d["kept"]}
    assert kept == {min(best, key=best.get)}
    assert min(record["losses"]) == pytest.approx(min(best.values()))
    assert record["descents"][[d["candidate"] for d in record["descents"]].index("learned")][
        "start"] == "field stage"
    timings = record["timings"]
    assert timings["total"] == pytest.approx(sum(timings[f"candidate_{n}"] for n in names))
    console = " ".join(result.output.split())  # the summary line wraps at any space
    assert all(f"{n}, from the" in console for n in names)


def test_register_candidates_bad_inputs(bottle_artifacts, observation, quick_config,
                                        tmp_path):
    from dataclasses import replace

    for name, candidates, needle in (("a", ("grid", "learned"), "--correspondence"),
                                     ("b", ("grid", "magic"), "register.candidates")):
        text = config_toml(replace(quick_config, register=replace(quick_config.register,
                                                                  candidates=("grid",))))
        text = text.replace('candidates = ["grid"]',
                            "candidates = [" + ", ".join(f'"{c}"' for c in candidates) + "]")
        (tmp_path / f"{name}.toml").write_text(text)
        one_line_error(_register(bottle_artifacts, observation, tmp_path / name, "--joint",
                                 config=tmp_path / f"{name}.toml"), needle)
        assert not (tmp_path / name).exists()


@pytest.mark.slow
def test_evaluate_with_correspondence_adds_the_learned_columns(bottle_artifacts, dataset_dir,
                                                               observation, tiny_corr,
                                                               tmp_path):
    """evaluate --correspondence: the learned backward's known-pose and pose-noise columns,
    the pose recovery of both backwards (the bottle's errors are axis tilts) and the ratios."""
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--dataset", str(dataset_dir), "--category",
                                 "bottle", "--shapespace", str(bottle_artifacts["shapespace"]),
                                 "--unet", str(bottle_artifacts["unet"]), "--correspondence",
                                 str(tiny_corr[0]), "--out", str(out), "--config",
                                 str(observation / "config.toml"), "--rotation-noise-deg", "30",
                                 "--translation-noise-m", "0.08"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["config"]["evaluate"]["pose_noise_deg"] == 30.0
    assert data["config"]["evaluate"]["pose_noise_xy"] == 0.08
    for row in data["rows"]:
        assert row["rgb_known_learned"]["mean"] > 0 and row["rgb_noisy_learned"]["mean"] > 0
        for a, b in zip(row["rgb_noisy"]["draws"], row["rgb_noisy_learned"]["draws"]):
            assert a["start_rotation_deg"] == b["start_rotation_deg"]  # the same draws
            assert b["rotation_full_deg"] >= b["rotation_deg"]  # tilt <= full angle
    assert data["pose_recovery_learned"]["bottle"]["n"] == len(data["rows"])
    assert "rgb_noisy_learned/rgb_known" in data["ratios"]
    md = (out / "report.md").read_text()
    assert "Pose noise: regtool learned backward (RGB)" in md
    assert "Pose recovery under pose noise (regtool learned backward" in md
