"""Multi-view evaluation (issue 15): the rig of seeded views around the first, one shared pose
error of the rig, and the report's latent-only / latent + residual and N-view columns."""

from __future__ import annotations

import numpy as np
import pytest

from regtool.evaluation.report import COLUMNS, evaluation_columns, write_report
from regtool.evaluation.run import perturb, perturb_rig, rig_poses, views_rng
from regtool.geometry.camera import Pose


def _eye(pose: Pose) -> np.ndarray:
    return -pose.rotation.T @ pose.translation


def test_rig_poses_surround_the_object_and_are_seeded():
    first = Pose.look_at(0.6, azimuth_deg=200.0, elevation_deg=25.0)
    poses = rig_poses(views_rng(0, "bottle", 1), first, 3, 0.6)
    again = rig_poses(views_rng(0, "bottle", 1), first, 3, 0.6)
    other = rig_poses(views_rng(0, "bottle", 0), first, 3, 0.6)
    assert poses[0] is first and len(poses) == 3
    assert all(np.allclose(a.matrix(), b.matrix()) for a, b in zip(poses, again))
    assert not np.allclose(poses[1].matrix(), other[1].matrix())
    azimuths = [np.degrees(np.arctan2(_eye(p)[1], _eye(p)[0])) % 360 for p in poses]
    for i in (1, 2):  # 120 degrees apart, +/-15 jitter
        step = (azimuths[i] - azimuths[0]) % 360
        assert abs(step - 120.0 * i) <= 15.0 + 1e-6, azimuths
        elevation = np.degrees(np.arcsin(_eye(poses[i])[2] / 0.6))
        assert 10.0 - 1e-6 <= elevation <= 40.0 + 1e-6
        assert np.linalg.norm(_eye(poses[i])) == pytest.approx(0.6)
        # Every camera looks at the object origin: it projects onto the optical axis.
        assert np.allclose(poses[i].translation[:2], 0.0, atol=1e-9)


def test_one_shared_pose_error_keeps_the_rig():
    first = Pose.look_at(0.6, azimuth_deg=10.0, elevation_deg=20.0)
    poses = rig_poses(views_rng(3, "drill", 0), first, 3, 0.6)
    noise = np.array([0.1, -0.2, 0.05, 0.02, -0.03, 0.0])
    moved = perturb_rig(poses, noise)
    assert np.allclose(moved[0].matrix(), perturb(poses[0], noise).matrix())
    for p, m in zip(poses[1:], moved[1:]):
        # camera i relative to camera 0 is unchanged (a calibrated rig) ...
        assert np.allclose(p.matrix() @ np.linalg.inv(poses[0].matrix()),
                           m.matrix() @ np.linalg.inv(moved[0].matrix()))
        # ... while the object's pose in camera i moved too.
        assert not np.allclose(p.matrix(), m.matrix())


def test_columns_default_to_table_one():
    assert evaluation_columns() == COLUMNS
    keys = [c.key for c in evaluation_columns(views=3, refine=True, noise=False)]
    assert keys == ["canonical", "latent_gt", "cpd_3d", "latent_3d_known", "rgb_known_latent",
                    "rgb_known", "rgb_known_views_latent", "rgb_known_views"]
    labels = {c.key: c.label for c in evaluation_columns(views=3, refine=True)}
    assert labels["rgb_known_views"] == "regtool, 3 views, latent + residual"
    assert labels["rgb_noisy_views_latent"] == "regtool, 3 views, latent only"
    assert "rgb_noisy_views" not in {c.key for c in evaluation_columns(views=1, refine=True)}


def test_report_with_views_and_refinement(tmp_path):
    columns = evaluation_columns(views=3, refine=True, noise=False)
    rows = []
    for i in range(2):
        row = {"category": "bottle", "instance": f"t{i}"}
        for j, col in enumerate(columns):
            row[col.key] = {"mean": 0.01 - 0.001 * j, "std": 0.001}
        rows.append(row)
    write_report(tmp_path / "r", rows, columns=columns)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Known pose: regtool, 3 views, latent + residual (RGB)" in md
    assert "Pose noise" not in md
    # cpd_3d is column 2 (0.008), rgb_known_views column 7 (0.003): 0.375.
    assert "| rgb_known_views/cpd_3d | 0.38 | 0.38 |" in md
    assert "| rgb_known/rgb_known_latent | 0.83 | 0.83 |" in md  # 0.005 / 0.006
