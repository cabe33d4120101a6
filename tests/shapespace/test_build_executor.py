"""`build-shapespace --executor local|ray`: the per-instance CPD fits as tasks give the shape
space of the sequential build (same seed, same numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app

runner = CliRunner()

TINY = """[shapespace]
template_points = 300
target_points = 300
max_iterations = 30
report_points = 300
"""


def _build(dataset_dir, config, out, *extra):
    result = runner.invoke(app, ["--seed", "4", "build-shapespace", "--dataset",
                                 str(dataset_dir), "--category", "spray", "--out", str(out),
                                 "--config", str(config), *extra])
    assert result.exit_code == 0, result.output
    with np.load(out) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "report_json"}
    report = json.loads(out.with_suffix(".json").read_text())["report"]
    for r in report["instances"]:
        r.pop("cpd_seconds")
    return arrays, report


def test_cpd_fits_on_executors_equal_the_sequential_build(dataset_dir, tmp_path):
    ray = pytest.importorskip("ray")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    arrays, report = _build(dataset_dir, config, tmp_path / "seq.npz")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = {"ray": _build(dataset_dir, config, tmp_path / "ray.npz", "--executor", "ray",
                              "--workers", "2")}
    finally:
        ray.shutdown()
    runs["local"] = _build(dataset_dir, config, tmp_path / "local.npz", "--executor", "local",
                           "--workers", "2")
    for name, (other, other_report) in runs.items():
        assert set(other) == set(arrays), name
        for key, value in arrays.items():
            if value.dtype.kind == "f":
                np.testing.assert_array_equal(other[key], value, err_msg=f"{name}: {key}")
        assert other_report["instances"] == report["instances"], name
        assert other_report["explained_variance"] == report["explained_variance"], name


def test_build_shapespace_executor_errors(dataset_dir, tmp_path):
    for args, fragment in ((["--executor", "spark"], "unknown executor 'spark'"),
                           (["--ray-address", "auto"], "--ray-address needs --executor ray"),
                           (["--executor", "local", "--workers", "0"], "at least 1")):
        out = tmp_path / "x.npz"
        result = runner.invoke(app, ["build-shapespace", "--dataset", str(dataset_dir),
                                     "--category", "spray", "--out", str(out), *args])
        one_line_error(result, fragment)
        assert not out.exists()
