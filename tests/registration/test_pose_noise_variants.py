"""scripts/pose_noise_variants.py registers exactly the pose-noise draws of `regtool evaluate`,
so its numbers compare with the report's."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
from clitools import config_toml

from regtool.evaluation.run import InstanceJob, evaluate_instance


def _script(repo_root):
    spec = importlib.util.spec_from_file_location(
        "pose_noise_variants", repo_root / "scripts" / "pose_noise_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_script_reproduces_the_evaluation_draw(bottle_artifacts, dataset_dir,
                                                        quick_config, repo_root, tmp_path):
    run = tmp_path / "run"
    (run / "bottle").mkdir(parents=True)
    (run / "dataset").symlink_to(dataset_dir, target_is_directory=True)
    for name, key in (("shapespace.npz", "shapespace"), ("unet.pt", "unet")):
        (run / "bottle" / name).symlink_to(bottle_artifacts[key])
    config_path = tmp_path / "config.toml"
    config_path.write_text(config_toml(quick_config))

    row = evaluate_instance(InstanceJob(str(dataset_dir), "bottle", 1,
                                        str(bottle_artifacts["shapespace"]),
                                        str(bottle_artifacts["unet"]), quick_config, 0, "cpu", 1))
    script = _script(repo_root)
    records = script.run_instance(str(run), "bottle", 1, {"default": {}, "true": {
        "noise_scale": 0.0}}, 1, 0, str(config_path))

    evaluated = row["rgb_noisy"]["draws"][0]
    default = [r for r in records if r["variant"] == "default"][0]
    assert default["instance"] == row["instance"] == "bottle_test_01"
    assert np.isclose(default["error_mm"], evaluated["mean"] * 1e3)
    assert np.isclose(default["start_rotation_deg"], evaluated["start_rotation_deg"])
    assert np.isclose(default["rotation_deg"], evaluated["rotation_deg"])
    # noise_scale 0 starts at the true pose.
    true_start = [r for r in records if r["variant"] == "true"][0]
    assert true_start["start_rotation_deg"] < 1e-3 and true_start["start_translation_mm"] < 1e-6
    table = script.markdown(records, ["default", "true"])
    assert "bottle_test_01" in table and f"{default['error_mm']:.2f}" in table
    json.dumps(records)  # plain JSON types
