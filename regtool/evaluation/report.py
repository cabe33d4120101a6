"""The evaluation report, laid out like Table 1 of the StilllebenDR paper.

Input: one row dict per test instance::

    {"category": "bottle", "instance": "test_000",
     "canonical": {"mean": 0.0081, "std": 0.0042},       # dataset units (e.g. metres)
     "rgb_known": {"mean": 0.0035, "std": 0.0019, ...},   # extra keys pass through to JSON
     "rgb_noisy": None,                                   # None / absent: not computed ("n/a")
     ...}

one entry per method column (`COLUMNS`): the undeformed canonical, CPD directly in 3D, the
latent fit to the true 3D points with known pose and with pose noise, the "ground truth"
representative (the test instance's CPD field projected onto the latent basis), regtool from RGB
with known pose and with pose noise (mean over the noise draws). Values are the mean and the std
over the instance's evaluation points of the distance to the nearest vertex of the deformed
canonical (`regtool.evaluation.metrics`).

Output (`write_report`), all in one output folder, all files or none:

* ``report.md`` -- Markdown table, "mean ± std" per instance in the report unit (mm for data in
  metres), a mean row per category and an overall mean row, then the ratios of mean errors;
* ``results.csv`` -- the same numbers in the report unit, one line per instance / mean row;
* ``results.json`` -- rows in the dataset's units (as given), per-category and overall means,
  ratios, columns, units, and the environment, config and timings given by the caller;
* ``errors.png`` -- bar chart of the mean error per method per category (and overall with
  several categories), error bars of +/- the mean per-instance standard deviation.

Mean rows: the mean over instances of the per-instance means, "±" the mean over instances of the
per-instance stds; the overall row averages over all instances.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regtool.io import json_bytes, staged_output, to_jsonable
from regtool.units import REPORT_UNITS_TO_METRES


@dataclass(frozen=True)
class Column:
    """A method column: `key` in the row dicts, `label` for headers and the chart legend,
    `setting` ("reference", "known pose", "pose noise") and `input` ("3D", "RGB", "-")."""

    key: str
    label: str
    setting: str
    input: str


COLUMNS: tuple[Column, ...] = (
    Column("canonical", "Canonical (undeformed)", "reference", "-"),
    Column("latent_gt", "Ground truth (latent projection)", "reference", "3D"),
    Column("cpd_3d", "CPD", "known pose", "3D"),
    Column("latent_3d_known", "Latent fit", "known pose", "3D"),
    Column("rgb_known", "regtool", "known pose", "RGB"),
    Column("latent_3d_noisy", "Latent fit", "pose noise", "3D"),
    Column("rgb_noisy", "regtool", "pose noise", "RGB"),
)

# The learned backward's columns (`evaluate --correspondence`), added after COLUMNS.
LEARNED_COLUMNS: tuple[Column, ...] = (
    Column("rgb_known_learned", "regtool learned backward", "known pose", "RGB"),
    Column("rgb_noisy_learned", "regtool learned backward", "pose noise", "RGB"),
)

# Ratios of mean errors shown under the table: (numerator, denominator).
RATIOS: tuple[tuple[str, str], ...] = (
    ("rgb_known", "canonical"),
    ("rgb_known", "latent_3d_known"),
    ("rgb_noisy", "rgb_known"),
    ("latent_3d_noisy", "latent_3d_known"),
)
# Added with the learned backward's columns.
LEARNED_RATIOS: tuple[tuple[str, str], ...] = (
    ("rgb_known_learned", "rgb_known"),
    ("rgb_noisy_learned", "rgb_known"),
    ("rgb_noisy_learned", "rgb_noisy"),
)

# The pose-noise methods whose pose recovery the report tabulates, with their titles.
POSE_METHODS = {"rgb_noisy": "regtool", "rgb_noisy_learned": "regtool learned backward"}

# Ratios of the multi-view and refinement columns, shown when the report has them.
EXTRA_RATIOS: tuple[tuple[str, str], ...] = (
    ("rgb_known", "rgb_known_latent"),
    ("rgb_known_latent", "cpd_3d"),
    ("rgb_known", "cpd_3d"),
    ("rgb_known_views", "rgb_known_views_latent"),
    ("rgb_known_views_latent", "cpd_3d"),
    ("rgb_known_views", "cpd_3d"),
    ("rgb_noisy", "rgb_noisy_latent"),
    ("rgb_noisy_views", "rgb_noisy_views_latent"),
)


def evaluation_columns(views: int = 1, refine: bool = False, noise: bool = True,
                       learned: bool = False) -> tuple[Column, ...]:
    """Return the report's columns: `COLUMNS` (without the pose-noise ones when `noise` is
    False), with a refinement the latent-only stage of each RGB column before it ("regtool,
    latent only"; the final column is then "regtool, latent + residual"), with `views` > 1
    the same RGB columns for the joint registration of the views, and with `learned` the
    learned backward's columns (`LEARNED_COLUMNS`) at the end."""
    out: list[Column] = []
    for col in COLUMNS:
        if not noise and col.setting == "pose noise":
            continue
        if col.input != "RGB":
            out.append(col)
            continue
        variants = [(col.key, "")] + ([(f"{col.key}_views", f", {views} views")]
                                      if views > 1 else [])
        for key, suffix in variants:
            if refine:
                out.append(Column(f"{key}_latent", f"regtool{suffix}, latent only",
                                  col.setting, col.input))
                out.append(Column(key, f"regtool{suffix}, latent + residual", col.setting,
                                  col.input))
            else:
                out.append(Column(key, f"regtool{suffix}", col.setting, col.input))
    if learned:
        out += [c for c in LEARNED_COLUMNS if noise or c.setting != "pose noise"]
    return tuple(out)

METRES_PER_UNIT = REPORT_UNITS_TO_METRES
UNIT_LABEL = {"m": "m", "cm": "cm", "mm": "mm", "um": "µm"}
DECIMALS = {"m": 5, "cm": 3, "mm": 2, "um": 1}

REPORT_MD = "report.md"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
CHART_PNG = "errors.png"


def column_title(column: Column) -> str:
    """Return the one-line header of a column, e.g. "Known pose: regtool (RGB)"."""
    if column.setting == "reference":
        return column.label
    return f"{column.setting.capitalize()}: {column.label} ({column.input})"


def unit_scale(dataset_units: str, report_units: str | None) -> tuple[str, float]:
    """Return (report unit, factor dataset -> report unit). `report_units` None picks "mm" for
    a length unit of METRES_PER_UNIT, else keeps the dataset's unit (factor 1). ValueError for
    a report unit that cannot be converted to."""
    if report_units is None:
        report_units = "mm" if dataset_units in METRES_PER_UNIT else dataset_units
    if report_units == dataset_units:
        return report_units, 1.0
    if dataset_units not in METRES_PER_UNIT or report_units not in METRES_PER_UNIT:
        raise ValueError(f"cannot convert '{dataset_units}' to '{report_units}'")
    return report_units, METRES_PER_UNIT[dataset_units] / METRES_PER_UNIT[report_units]


def mean_over_draws(draws: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Return the table value of a method run on several seeded draws (e.g. pose noise):
    {"mean": mean of the draws' means, "std": mean of their stds, "spread": std (ddof=0) of the
    draws' means, "draws": the draws as given}; ValueError if there are none."""
    if len(draws) == 0:
        raise ValueError("mean_over_draws: no draws")
    means = np.array([float(d["mean"]) for d in draws])
    stds = np.array([float(d["std"]) for d in draws])
    return {"mean": float(means.mean()), "std": float(stds.mean()),
            "spread": float(means.std()), "draws": [dict(d) for d in draws]}


POSE_KEYS = ("start_rotation_deg", "rotation_deg", "start_translation_m", "translation_m")


def pose_recovery(rows: Sequence[Mapping[str, Any]], method: str = "rgb_noisy"
                  ) -> dict[str, dict[str, float]]:
    """Return, per category and "all", the mean over the pose-noise draws of `method` of the
    pose errors before and after registration (POSE_KEYS: degrees, metres) and the number of
    draws "n"; draws without these keys are skipped, groups without any are left out."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        value = row.get(method)
        for draw in (value or {}).get("draws", []):
            if all(k in draw for k in POSE_KEYS):
                groups.setdefault(row["category"], []).append(draw)
                groups.setdefault("all", []).append(draw)
    order = [g for g in groups if g != "all"] + (["all"] if "all" in groups else [])
    return {g: {**{k: float(np.mean([d[k] for d in groups[g]])) for k in POSE_KEYS},
                "n": len(groups[g])} for g in order}


def _check_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
    if len(rows) == 0:
        raise ValueError("report: no rows")
    seen = set()
    for i, row in enumerate(rows):
        for key in ("category", "instance"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise ValueError(f"report row {i}: '{key}' must be a non-empty string")
        ident = (row["category"], row["instance"])
        if ident in seen:
            raise ValueError(f"report row {i}: duplicate instance {ident}")
        seen.add(ident)
        for col in columns:
            value = row.get(col.key)
            if value is None:
                continue
            for stat in ("mean", "std"):
                v = value.get(stat) if isinstance(value, Mapping) else None
                if (isinstance(v, bool) or not isinstance(v, (int, float, np.floating))
                        or not math.isfinite(v) or v < 0):
                    raise ValueError(f"report row {i} ({ident[0]}/{ident[1]}), column "
                                     f"'{col.key}': '{stat}' must be a finite number >= 0, "
                                     f"got {v!r}")


def summarise(rows: Sequence[Mapping[str, Any]],
              columns: Sequence[Column] = COLUMNS) -> dict[str, Any]:
    """Return {"per_category": {category: {column: {"mean", "std", "n"} | None}}, "overall":
    {column: ... | None}} in the rows' units: mean over instances of the per-instance means and
    stds, `n` instances with a value; None where no instance has one."""
    def agg(subset):
        out = {}
        for col in columns:
            vals = [r[col.key] for r in subset if r.get(col.key) is not None]
            out[col.key] = None if not vals else {
                "mean": float(np.mean([v["mean"] for v in vals])),
                "std": float(np.mean([v["std"] for v in vals])), "n": len(vals)}
        return out

    categories = list(dict.fromkeys(r["category"] for r in rows))
    return {"per_category": {c: agg([r for r in rows if r["category"] == c])
                             for c in categories},
            "overall": agg(rows)}


def ratios(rows: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]] = RATIOS
           ) -> dict[str, dict[str, float | None]]:
    """Return {"num/den": {category or "all": ratio | None}}: the mean over instances of
    column `num`'s mean error divided by that of column `den`, over the instances that have
    both (paired); None where there are none or the denominator is 0."""
    categories = list(dict.fromkeys(r["category"] for r in rows))
    groups = {c: [r for r in rows if r["category"] == c] for c in categories}
    groups["all"] = list(rows)
    out: dict[str, dict[str, float | None]] = {}
    for num, den in pairs:
        key = f"{num}/{den}"
        out[key] = {}
        for g, subset in groups.items():
            both = [r for r in subset if r.get(num) is not None and r.get(den) is not None]
            a = float(np.mean([r[num]["mean"] for r in both])) if both else 0.0
            b = float(np.mean([r[den]["mean"] for r in both])) if both else 0.0
            out[key][g] = a / b if both and b > 0 else None
    return out


def _fmt(value: Mapping[str, Any] | None, scale: float, decimals: int) -> str:
    if value is None:
        return "n/a"
    return f"{value['mean'] * scale:.{decimals}f} ± {value['std'] * scale:.{decimals}f}"


def _fmt_mean(value: Mapping[str, Any] | None, n_rows: int, scale: float, decimals: int) -> str:
    if value is None:
        return "n/a"
    cell = f"**{_fmt(value, scale, decimals)}**"
    return cell if value["n"] == n_rows else f"{cell} (n={value['n']}/{n_rows})"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column],
                   summary: Mapping[str, Any], unit: str, scale: float,
                   decimals: int) -> str:
    """Return the Markdown table (header, one line per instance, a mean line after each
    category's instances, an overall mean line); cells "mean ± std" in `unit` (values * scale)."""
    header = ["Category", "Instance"] + [column_title(c) for c in columns]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join(["---", "---"] + ["---:"] * len(columns)) + " |"]

    def line(cells):
        lines.append("| " + " | ".join(cells) + " |")

    for category, stats in summary["per_category"].items():
        for row in rows:
            if row["category"] == category:
                line([category, row["instance"]]
                     + [_fmt(row.get(c.key), scale, decimals) for c in columns])
        n = sum(1 for r in rows if r["category"] == category)
        line([f"**{category}**", "**mean**"]
             + [_fmt_mean(stats[c.key], n, scale, decimals) for c in columns])
    line(["**all**", "**mean**"]
         + [_fmt_mean(summary["overall"][c.key], len(rows), scale, decimals) for c in columns])
    return "\n".join(lines) + "\n"


def _pose_markdown(recovery: Mapping[str, Mapping[str, float]],
                   method: str = "regtool") -> list[str]:
    if not recovery:
        return []
    lines = [f"\nPose recovery under pose noise ({method}, RGB, joint mode; mean over the "
             "draws): error of the start and of the final pose against the true pose "
             "(symmetric categories: the tilt of the symmetry axis).\n",
             "| Group | Draws | Rotation start (deg) | Rotation final (deg) "
             "| Translation start (mm) | Translation final (mm) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for group, v in recovery.items():
        lines.append(f"| {group} | {v['n']} | {v['start_rotation_deg']:.1f} "
                     f"| {v['rotation_deg']:.1f} | {1000 * v['start_translation_m']:.1f} "
                     f"| {1000 * v['translation_m']:.1f} |")
    lines.append("")
    return lines


def _markdown(rows, columns, summary, ratio_table, unit, scale, decimals, title) -> str:
    label = UNIT_LABEL.get(unit, unit)
    parts = [f"# {title}\n",
             f"Mean ± std error in **{label}**: for each evaluation point of a test instance, "
             f"the distance to the nearest vertex of the deformed canonical mesh (StilllebenDR, "
             f"Table 1). Mean rows average the per-instance means and stds; (n=k/m) marks a "
             f"mean over only k of the m instances.\n",
             markdown_table(rows, columns, summary, unit, scale, decimals)]
    keys = {c.key for c in columns}
    shown = {k: v for k, v in ratio_table.items() if set(k.split("/")) <= keys}
    if shown:
        groups = list(summary["per_category"]) + ["all"]
        parts.append("\nRatios of mean errors (over the instances that have both columns):\n")
        parts.append("| Ratio | " + " | ".join(groups) + " |")
        parts.append("| --- | " + " | ".join(["---:"] * len(groups)) + " |")
        for key, per_group in shown.items():
            cells = ["n/a" if per_group[g] is None else f"{per_group[g]:.2f}" for g in groups]
            parts.append(f"| {key} | " + " | ".join(cells) + " |")
        parts.append("")
    for method, name in POSE_METHODS.items():
        if method in keys:
            parts.extend(_pose_markdown(pose_recovery(rows, method), name))
    return "\n".join(parts)


def _csv(rows, columns, summary, unit, scale) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row_type", "category", "instance"]
                    + [f"{c.key}_{s}_{unit}" for c in columns for s in ("mean", "std")])

    def cells(values):
        out = []
        for c in columns:
            v = values.get(c.key)
            out += (["", ""] if v is None
                    else [f"{v['mean'] * scale:.9g}", f"{v['std'] * scale:.9g}"])
        return out

    for category, stats in summary["per_category"].items():
        for row in rows:
            if row["category"] == category:
                writer.writerow(["instance", category, row["instance"]] + cells(row))
        writer.writerow(["category_mean", category, ""] + cells(stats))
    writer.writerow(["overall_mean", "all", ""] + cells(summary["overall"]))
    return buf.getvalue()


def chart_series(summary: Mapping[str, Any], columns: Sequence[Column], scale: float
                 ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (groups, means, stds) of the bar chart: the categories, plus "all" when there is
    more than one, and (len(columns), len(groups)) arrays of the mean error and the mean
    per-instance std times `scale` (NaN where a column has no value)."""
    groups = list(summary["per_category"])
    stats = [summary["per_category"][g] for g in groups]
    if len(groups) > 1:
        groups.append("all")
        stats.append(summary["overall"])
    means = np.array([[s[c.key]["mean"] * scale if s[c.key] else np.nan for s in stats]
                      for c in columns], dtype=float).reshape(len(columns), len(groups))
    stds = np.array([[s[c.key]["std"] * scale if s[c.key] else np.nan for s in stats]
                     for c in columns], dtype=float).reshape(len(columns), len(groups))
    return groups, means, stds


def bar_chart_png(summary: Mapping[str, Any], columns: Sequence[Column], unit: str,
                  scale: float, title: str) -> bytes:
    """Return a PNG (matplotlib Agg, no global pyplot state): grouped bars of the mean error in
    `unit` per method (bar colour) per category and overall (groups on the x axis; "all" only
    with several categories), each with an error bar of the mean per-instance std."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups, means, stds = chart_series(summary, columns, scale)
    fig = Figure(figsize=(max(6.0, 0.25 * len(groups) * len(columns) + 4.0), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(columns))
    x = np.arange(len(groups))
    for j, col in enumerate(columns):
        ax.bar(x + (j - (len(columns) - 1) / 2) * width, means[j], width, yerr=stds[j],
               capsize=2, error_kw={"elinewidth": 0.8, "alpha": 0.7},
               label=column_title(col), color=f"C{j % 10}")
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(f"mean error ({UNIT_LABEL.get(unit, unit)}), bars: +/- std")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(out_dir: Path, rows: Sequence[Mapping[str, Any]], *,
                 columns: Sequence[Column] = COLUMNS, dataset_units: str = "m",
                 report_units: str | None = None, environment: Mapping[str, Any] | None = None,
                 config: Any = None, timings: Mapping[str, Any] | None = None,
                 title: str = "regtool evaluation",
                 extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write report.md, results.csv, results.json and errors.png into `out_dir` (created if
    needed; other files there are left alone) and return {file name: path}.

    rows: one dict per test instance (module docstring), values in `dataset_units`.
    columns: the method columns, in table order. report_units: unit of the md/csv/png numbers
    (None: "mm" for data in m/cm/mm, else the dataset's unit). environment, config, timings,
    extra: stored in results.json as given (JSON-convertible).

    Everything is computed before anything is written, and the files are moved into place
    together (`staged_output`): on any error (ValueError for malformed rows, OutputError for an
    unwritable folder) `out_dir` gets no new or partial file.
    """
    _check_rows(rows, columns)
    unit, scale = unit_scale(dataset_units, report_units)
    decimals = DECIMALS.get(unit, 4)
    summary = summarise(rows, columns)
    keys = {c.key for c in columns}
    ratio_table = ratios(rows, RATIOS + tuple(p for p in EXTRA_RATIOS + LEARNED_RATIOS
                                              if set(p) <= keys))
    md = _markdown(rows, columns, summary, ratio_table, unit, scale, decimals, title)
    table_csv = _csv(rows, columns, summary, unit, scale)
    chart = bar_chart_png(summary, columns, unit, scale, title)
    record = {
        "title": title,
        "metric": "per evaluation point: L2 distance to the nearest vertex of the deformed "
                  "canonical; mean and std over the points of an instance",
        "units": dataset_units,
        "report_units": unit,
        "report_scale": scale,
        "columns": [{"key": c.key, "label": c.label, "setting": c.setting, "input": c.input,
                     "title": column_title(c)} for c in columns],
        "rows": [dict(r) for r in rows],
        "summary": summary,
        "ratios": ratio_table,
        "pose_recovery": pose_recovery(rows),
        **({"pose_recovery_learned": pose_recovery(rows, "rgb_noisy_learned")}
           if any(c.key == "rgb_noisy_learned" for c in columns) else {}),
        "environment": dict(environment or {}),
        "config": config,
        "timings": dict(timings or {}),
        "files": [REPORT_MD, RESULTS_CSV, RESULTS_JSON, CHART_PNG],
    }
    for key, value in (extra or {}).items():
        if key in record:
            raise ValueError(f"extra key '{key}' collides with a results.json key")
        record[key] = value
    payload = json_bytes(to_jsonable(record))

    with staged_output(out_dir, "evaluation") as stage:
        (stage / REPORT_MD).write_text(md, encoding="utf-8")
        (stage / RESULTS_CSV).write_text(table_csv, encoding="utf-8")
        (stage / CHART_PNG).write_bytes(chart)
        (stage / RESULTS_JSON).write_bytes(payload)
    return {name: Path(out_dir) / name for name in record["files"]}
