"""The Table-1 report: Markdown, CSV, JSON and bar chart, written all together or not at all."""

from __future__ import annotations

import csv
import errno
import json
import pathlib

import imageio.v3 as iio
import numpy as np
import pytest

from regtool.errors import OutputError
from regtool.evaluation import report
from regtool.evaluation.report import COLUMNS, write_report

FILES = {"report.md", "results.csv", "results.json", "errors.png"}


def make_rows() -> list[dict]:
    """Two categories x two instances, errors in metres; rgb_noisy missing for one instance."""
    rows = []
    for c, category in enumerate(("bottle", "drill")):
        for i in range(2):
            base = 0.010 + 0.004 * c + 0.002 * i
            row = {"category": category, "instance": f"test_{i:03d}"}
            for j, col in enumerate(COLUMNS):
                row[col.key] = {"mean": base * (1.0 - 0.1 * j), "std": base * 0.25}
            rows.append(row)
    rows[3]["rgb_noisy"] = None
    rows[0]["rgb_noisy"]["draws"] = [{"mean": 0.005, "std": 0.001}, {"mean": 0.006, "std": 0.002}]
    return rows


def test_writes_table1_layout_in_mm(tmp_path):
    rows = make_rows()
    out = tmp_path / "report"
    paths = write_report(out, rows, dataset_units="m", environment={"device": "cpu"},
                         config={"evaluate": {"noise_draws": 2}}, timings={"total_s": 12.5})
    assert set(paths) == FILES and all(p.is_file() for p in paths.values())
    assert {p.name for p in out.iterdir()} == FILES | {".regtool-sets"}  # no staging leftovers
    sets = sorted(p.name for p in (out / ".regtool-sets").iterdir())
    assert len(sets) == 2 and sets[0] == "evaluation", sets  # the link and one generation
    assert sets[1].startswith("evaluation.") and not sets[1].endswith(".tmp"), sets

    md = (out / "report.md").read_text()
    assert "**mm**" in md
    # bottle test_000 canonical: 10.00 ± 2.50 mm.
    assert "| bottle | test_000 | 10.00 ± 2.50 |" in md
    # bottle mean row, canonical: mean(10, 12) ± mean(2.5, 3.0).
    assert "| **bottle** | **mean** | **11.00 ± 2.75** |" in md
    # overall canonical mean over the four instances: (10 + 12 + 14 + 16) / 4 = 13.
    assert "| **all** | **mean** | **13.00 ± 3.25** |" in md
    assert "n/a" in md  # the missing rgb_noisy value
    assert "(n=1/2)" in md and "(n=3/4)" in md  # means over fewer instances are marked
    header = md.splitlines()[4]
    for col in COLUMNS:
        assert report.column_title(col) in header
    assert "rgb_known/canonical" in md

    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["row_type"] for r in table] == ["instance", "instance", "category_mean"] * 2 + \
        ["overall_mean"]
    assert float(table[0]["canonical_mean_mm"]) == pytest.approx(10.0)
    assert float(table[2]["canonical_std_mm"]) == pytest.approx(2.75)
    assert table[4]["rgb_noisy_mean_mm"] == ""  # drill test_001 has no rgb_noisy
    # the drill mean of rgb_noisy averages only the instance that has one.
    drill0 = rows[2]["rgb_noisy"]["mean"] * 1000.0
    assert float(table[5]["rgb_noisy_mean_mm"]) == pytest.approx(drill0)

    data = json.loads((out / "results.json").read_text())
    assert data["units"] == "m" and data["report_units"] == "mm"
    assert data["report_scale"] == pytest.approx(1000.0)
    assert data["environment"] == {"device": "cpu"}
    assert data["config"] == {"evaluate": {"noise_draws": 2}}
    assert data["timings"] == {"total_s": 12.5}
    assert data["rows"][0]["rgb_noisy"]["draws"][1]["mean"] == 0.006
    assert data["rows"][3]["rgb_noisy"] is None
    assert data["summary"]["overall"]["canonical"]["mean"] == pytest.approx(0.013)
    assert data["summary"]["per_category"]["drill"]["rgb_noisy"]["n"] == 1
    ratio = data["ratios"]["rgb_known/canonical"]["all"]
    expected = data["summary"]["overall"]["rgb_known"]["mean"] / 0.013
    assert ratio == pytest.approx(expected)
    # Ratios pair instances: rgb_noisy/rgb_known over the three instances having both.
    paired = [r for r in rows if r["rgb_noisy"] is not None]
    expected = (np.mean([r["rgb_noisy"]["mean"] for r in paired])
                / np.mean([r["rgb_known"]["mean"] for r in paired]))
    assert data["ratios"]["rgb_noisy/rgb_known"]["all"] == pytest.approx(expected)

    png = iio.imread(out / "errors.png")
    assert png.ndim == 3 and png.shape[0] >= 300 and png.shape[1] >= 600
    assert png[..., :3].std() > 10  # not a blank image


def test_units_other_than_metres(tmp_path):
    rows = [{"category": "spray", "instance": "t1", "canonical": {"mean": 3.0, "std": 1.0}}]
    columns = [COLUMNS[0]]
    write_report(tmp_path / "mm", rows, columns=columns, dataset_units="mm")
    assert "| spray | t1 | 3.00 ± 1.00 |" in (tmp_path / "mm" / "report.md").read_text()
    write_report(tmp_path / "um", rows, columns=columns, dataset_units="mm", report_units="um")
    md = (tmp_path / "um" / "report.md").read_text()
    assert "**µm**" in md and "3000.0 ± 1000.0" in md
    write_report(tmp_path / "raw", rows, columns=columns, dataset_units="scan_units")
    assert "**scan_units**" in (tmp_path / "raw" / "report.md").read_text()


@pytest.mark.parametrize("mutate", [
    lambda rows: rows[0]["canonical"].update(mean=float("nan")),
    lambda rows: rows[0]["canonical"].update(std=-1.0),
    lambda rows: rows[0]["canonical"].pop("std"),
    lambda rows: rows[0].pop("category"),
    lambda rows: rows.append(dict(rows[0])),
    lambda rows: rows.clear(),
])
def test_malformed_rows_write_nothing(tmp_path, mutate):
    rows = make_rows()
    mutate(rows)
    out = tmp_path / "report"
    with pytest.raises(ValueError):
        write_report(out, rows)
    assert not out.exists()


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        write_report(blocker / "report", make_rows())


def test_failure_midway_leaves_folder_untouched(tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("old report")
    (out / "instances").mkdir()
    real = pathlib.Path.write_bytes

    def failing(self, data):
        if self.name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", failing)
    with pytest.raises(OutputError, match="No space left"):
        write_report(out, make_rows())
    assert sorted(p.name for p in out.iterdir()) == ["instances", "report.md"]
    assert (out / "report.md").read_text() == "old report"


def test_chart_failure_writes_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib failed")

    monkeypatch.setattr(report, "bar_chart_png", broken)
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "report", make_rows())
    assert not (tmp_path / "report").exists()


def test_summarise_matches_numpy():
    rows = make_rows()
    summary = report.summarise(rows)
    bottle = [r["rgb_known"]["mean"] for r in rows if r["category"] == "bottle"]
    assert summary["per_category"]["bottle"]["rgb_known"]["mean"] == pytest.approx(np.mean(bottle))
    assert summary["overall"]["rgb_noisy"]["n"] == 3


def test_mean_over_draws():
    value = report.mean_over_draws([{"mean": 0.004, "std": 0.001}, {"mean": 0.006, "std": 0.003}])
    assert value["mean"] == pytest.approx(0.005) and value["std"] == pytest.approx(0.002)
    assert value["spread"] == pytest.approx(0.001) and len(value["draws"]) == 2
    with pytest.raises(ValueError):
        report.mean_over_draws([])


def test_pose_recovery_per_category_and_in_the_report(tmp_path):
    rows = make_rows()
    pose = ("start_rotation_deg", "rotation_deg", "start_translation_m", "translation_m")
    rows[0]["rgb_noisy"]["draws"] = [
        dict(zip(pose, (20.0, 4.0, 0.05, 0.01)), mean=0.005, std=0.001),
        dict(zip(pose, (10.0, 2.0, 0.03, 0.00)), mean=0.006, std=0.002)]
    rows[2]["rgb_noisy"]["draws"] = [dict(zip(pose, (6.0, 9.0, 0.02, 0.04)), mean=0.01, std=0.0),
                                     {"mean": 0.01, "std": 0.0}]  # no pose keys: skipped
    recovery = report.pose_recovery(rows)
    assert list(recovery) == ["bottle", "drill", "all"]
    assert recovery["bottle"] == pytest.approx({"start_rotation_deg": 15.0, "rotation_deg": 3.0,
                                                "start_translation_m": 0.04,
                                                "translation_m": 0.005, "n": 2})
    assert recovery["drill"]["n"] == 1 and recovery["drill"]["rotation_deg"] == 9.0
    assert recovery["all"]["n"] == 3
    assert recovery["all"]["rotation_deg"] == pytest.approx((4.0 + 2.0 + 9.0) / 3)
    assert report.pose_recovery(make_rows()) == {}  # draws without pose errors: no section

    write_report(tmp_path / "r", rows, dataset_units="m")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Pose recovery under pose noise" in md
    assert "| bottle | 2 | 15.0 | 3.0 | 40.0 | 5.0 |" in md
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert data["pose_recovery"]["drill"]["translation_m"] == pytest.approx(0.04)
    plain = tmp_path / "plain"
    write_report(plain, make_rows(), dataset_units="m")
    assert "Pose recovery" not in (plain / "report.md").read_text()


def test_chart_series_groups_and_error_bars():
    rows = make_rows()
    groups, means, stds = report.chart_series(report.summarise(rows), COLUMNS, 1000.0)
    assert groups == ["bottle", "drill", "all"]
    assert means.shape == stds.shape == (len(COLUMNS), 3)
    bottle = [r for r in rows if r["category"] == "bottle"]
    assert stds[0, 0] == pytest.approx(1000 * np.mean([r[COLUMNS[0].key]["std"] for r in bottle]))
    assert means[0, 2] == pytest.approx(1000 * np.mean([r[COLUMNS[0].key]["mean"] for r in rows]))
    # One category: no duplicate "all" group.
    groups, means, _ = report.chart_series(report.summarise(bottle), COLUMNS, 1.0)
    assert groups == ["bottle"] and means.shape == (len(COLUMNS), 1)
    png = report.bar_chart_png(report.summarise(bottle), COLUMNS, "mm", 1000.0, "t")
    assert iio.imread(png).ndim == 3
