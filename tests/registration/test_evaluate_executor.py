"""`regtool evaluate --executor ray` gives the numbers of the local process pool (same seed,
same worker count), and a bad executor is refused in one line."""

from __future__ import annotations

import json

import pytest
from clitools import config_toml, one_line_error
from typer.testing import CliRunner

from regtool.cli import app

pytestmark = pytest.mark.gl
runner = CliRunner()


def _without_timings(value):
    """`value` (JSON) without the keys that hold seconds."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("timings", "seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_evaluate_on_ray_equals_the_local_pool(bottle_artifacts, dataset_dir, quick_config,
                                               tmp_path):
    ray = pytest.importorskip("ray")
    config = tmp_path / "config.toml"
    config.write_text(config_toml(quick_config))
    rows = {}
    for executor in ("local", "ray"):
        if executor == "ray":
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            out = tmp_path / executor
            result = runner.invoke(app, [
                "evaluate", "--dataset", str(dataset_dir), "--category", "bottle",
                "--shapespace", str(bottle_artifacts["shapespace"]), "--unet",
                str(bottle_artifacts["unet"]), "--out", str(out), "--config", str(config),
                "--workers", "2", "--executor", executor])
        finally:
            if executor == "ray":
                ray.shutdown()
        assert result.exit_code == 0, result.output
        rows[executor] = _without_timings(json.loads((out / "results.json").read_text())["rows"])
    assert rows["ray"] == rows["local"]


def test_evaluate_bad_executor(bottle_artifacts, dataset_dir, tmp_path):
    for args, fragment in ((["--executor", "dask"], "unknown executor 'dask'"),
                           (["--ray-address", "auto"], "--ray-address needs --executor ray")):
        out = tmp_path / "e"
        result = runner.invoke(app, ["evaluate", "--dataset", str(dataset_dir), "--category",
                                     "bottle", "--shapespace",
                                     str(bottle_artifacts["shapespace"]), "--unet",
                                     str(bottle_artifacts["unet"]), "--out", str(out), *args])
        one_line_error(result, fragment)
        assert not out.exists()
