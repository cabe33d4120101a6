"""Reliability of outputs (issue 12, points 1, 2, 4, 5, 10, 14): no deleted user file, result
sets that switch as a whole also under SIGKILL, no orphaned worker processes, no output folder
left by a failed run, one line instead of a traceback, the user's umask for folders."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from clitools import one_line_error
from typer.testing import CliRunner

from regtool.cli import app

runner = CliRunner()
SETS = ".regtool-sets"
RESULT_FILES = {"deformed.ply", "deformed.obj", "result.json", "overlay.png",
                "optimisation.gif"}
SMALL = ["--categories", "bottle", "--n-train", "2", "--n-test", "1"]


def _no_sheets(tmp_path: Path) -> str:
    cfg = tmp_path / "no_sheets.toml"
    cfg.write_text("[make_dataset]\ncontact_sheet = false\n")
    return str(cfg)


@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if make-dataset starts generating meshes."""
    import regtool.data.generate as generate

    def forbidden(*args, **kwargs):
        raise AssertionError("make-dataset generated a mesh before refusing its output")

    monkeypatch.setattr(generate, "generate_mesh", forbidden)


# --- 1. make-dataset replaces only what regtool wrote ------------------------------------------

def test_make_dataset_refuses_a_folder_with_user_files(tmp_path, no_generation):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    one_line_error(runner.invoke(app, ["make-dataset", "--out", str(out), *SMALL]),
                   "notes.txt", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary sibling


def test_make_dataset_refuses_a_file(tmp_path, no_generation):
    out = tmp_path / "data.txt"
    out.write_text("user data")
    one_line_error(runner.invoke(app, ["make-dataset", "--out", str(out), *SMALL]),
                   "not a folder")
    assert out.read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]  # no .data.txt.old


def test_make_dataset_refuses_the_current_folder(tmp_path, monkeypatch, no_generation):
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), ".."):
        one_line_error(runner.invoke(app, ["make-dataset", "--out", out, *SMALL]),
                       "current folder")
    assert list(tmp_path.iterdir()) == []


def test_make_dataset_replaces_its_own_dataset_only(tmp_path):
    out = tmp_path / "ds"
    args = ["make-dataset", "--out", str(out), *SMALL, "--config", _no_sheets(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    first = (out / "manifest.json").read_text()
    result = runner.invoke(app, args)  # a dataset regtool wrote: replaced (good input)
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").read_text() == first
    (out / "bottle" / "notes.txt").write_text("added by the user")
    one_line_error(runner.invoke(app, args), "bottle/notes.txt")
    assert (out / "bottle" / "notes.txt").is_file()
    result = runner.invoke(app, [*args, "--overwrite"])  # explicit: replace everything
    assert result.exit_code == 0, result.output
    assert not (out / "bottle" / "notes.txt").exists()
    assert (out / "manifest.json").read_text() == first
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["make-dataset", "--out", str(empty), *SMALL, "--config",
                                 _no_sheets(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty", "no_sheets.toml"]


# --- 14. folders get the user's umask --------------------------------------------------------

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_dataset_and_result_folders_follow_the_umask(tmp_path, umask_022):
    out = tmp_path / "ds"
    result = runner.invoke(app, ["make-dataset", "--out", str(out), *SMALL, "--config",
                                 _no_sheets(tmp_path)])
    assert result.exit_code == 0, result.output
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {oct(0o755)}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}

    reg = tmp_path / "reg"
    _write_set(reg, 1)
    folders = [reg, *(p for p in reg.rglob("*") if p.is_dir() and not p.is_symlink())]
    assert len(folders) == 3  # reg, .regtool-sets, the generation
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {oct(0o755)}
    assert {oct(p.stat().st_mode & 0o777) for p in reg.iterdir() if not p.is_dir()} == \
        {oct(0o644)}


# --- 5. register / evaluate: check first, then create --------------------------------------

def _register_inputs(tmp_path: Path) -> dict[str, Path]:
    from regtool.geometry.camera import CameraIntrinsics, Pose

    cam = CameraIntrinsics.from_fov(40, 30, 40.0)
    (tmp_path / "camera.json").write_text(json.dumps(cam.to_dict()))
    (tmp_path / "pose.json").write_text(json.dumps(Pose.look_at(0.6, 30.0, 20.0).to_dict()))
    iio.imwrite(tmp_path / "obs.png", np.zeros((30, 40, 3), np.uint8))
    (tmp_path / "broken.npz").write_bytes(b"not a shape space")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    return {k: tmp_path / n for k, n in (("camera", "camera.json"), ("pose", "pose.json"),
                                         ("image", "obs.png"), ("shapespace", "broken.npz"),
                                         ("unet", "broken.pt"))}


def test_failed_register_leaves_no_output_folder(tmp_path):
    inp = _register_inputs(tmp_path)
    out = tmp_path / "out"
    args = ["register", "--shapespace", str(inp["shapespace"]), "--unet", str(inp["unet"]),
            "--image", str(inp["image"]), "--camera", str(inp["camera"]), "--pose",
            str(inp["pose"]), "--out", str(out)]
    result = runner.invoke(app, args)
    one_line_error(result)
    assert not out.exists()
    bad_pose = tmp_path / "bad_pose.json"
    bad_pose.write_text("{}")
    args[args.index("--pose") + 1] = str(bad_pose)
    one_line_error(runner.invoke(app, args), "bad_pose.json")
    assert not out.exists()
    # An output that can never be created is still refused, before the inputs are read.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args[args.index("--out") + 1] = str(blocker / "out")
    one_line_error(runner.invoke(app, args), "not a folder")


def test_failed_evaluate_leaves_no_output_folder(tmp_path, monkeypatch):
    """The evaluation fails after the inputs were checked (simulated): no report folder."""
    import regtool.evaluation.run as run
    import regtool.registration.pipeline as pipeline
    from regtool.config import MakeDatasetConfig
    from regtool.data.generate import make_dataset
    from regtool.errors import RegistrationError

    make_dataset(tmp_path / "ds", MakeDatasetConfig(categories=("bottle",), n_train=2,
                                                    n_test=1, contact_sheet=False), seed=0)
    (tmp_path / "ss.npz").write_bytes(b"x")
    (tmp_path / "unet.pt").write_bytes(b"x")
    monkeypatch.setattr(pipeline, "load_models", lambda *args, **kwargs: None)

    def failing(*args, **kwargs):
        raise RegistrationError("simulated failure during the evaluation")

    monkeypatch.setattr(run, "evaluate", failing)
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--dataset", str(tmp_path / "ds"), "--category",
                                 "bottle", "--shapespace", str(tmp_path / "ss.npz"), "--unet",
                                 str(tmp_path / "unet.pt"), "--out", str(out)])
    one_line_error(result, "simulated failure")
    assert not out.exists()


# --- 10 (part). a folder given where a file is written -------------------------------------

@pytest.mark.gl
def test_render_view_out_is_a_folder(tmp_path):
    inp = _register_inputs(tmp_path)
    mesh = tmp_path / "box.ply"
    trimesh.creation.box(extents=(0.1, 0.1, 0.1)).export(mesh)
    folder = tmp_path / "folder"
    folder.mkdir()
    base = ["render-view", "--mesh", str(mesh), "--camera", str(inp["camera"]), "--pose",
            str(inp["pose"])]
    one_line_error(runner.invoke(app, [*base, "--out", str(folder)]), "is a folder")
    one_line_error(runner.invoke(app, [*base, "--out", str(tmp_path / "a.png"), "--mask-out",
                                       str(folder)]), "is a folder")
    assert not (tmp_path / "a.png").exists()
    assert list(folder.iterdir()) == []
    result = runner.invoke(app, [*base, "--out", str(folder / "view.png")])  # good input
    assert result.exit_code == 0, result.output
    assert iio.imread(folder / "view.png").shape == (30, 40, 3)


def test_train_unet_out_is_a_folder(tmp_path, dataset_dir, monkeypatch):
    import regtool.features.train as train

    def forbidden(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(train, "train_unet", forbidden)
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_error(runner.invoke(app, ["train-unet", "--dataset", str(dataset_dir),
                                       "--category", "bottle", "--out", str(folder)]),
                   "is a folder")
    assert list(folder.iterdir()) == []


# --- 2. a result set switches as a whole -----------------------------------------------------

H, W = 24, 32


def _set_args(run_id: int) -> dict:
    """write_registration arguments whose every file identifies `run_id` (1-99): vertices
    scaled by z[0] = run_id, observation (left third of the overlay, GIF frames) grey
    run_id / 100."""
    from regtool.geometry.camera import CameraIntrinsics, Pose
    from regtool.registration.result import ViewResult

    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.05)
    grey = np.full((H, W, 3), run_id / 100.0, np.float32)
    view = ViewResult(observed=grey, rendered=np.zeros((H, W, 3), np.float32),
                      rendered_mask=np.zeros((H, W), bool),
                      pose=Pose.look_at(0.6, 30.0), camera=CameraIntrinsics.from_fov(W, H, 40.0))
    return dict(vertices=np.asarray(sphere.vertices) * run_id, faces=np.asarray(sphere.faces),
                z=np.array([float(run_id), 0.0]), views=[view], losses=[1.0],
                frames=[grey, grey * 0.5])


def _write_set(out: Path, run_id: int) -> None:
    from regtool.registration.result import write_registration

    write_registration(out, **_set_args(run_id))


def _run_id_of_set(out: Path) -> int:
    """Return the run id all result files in `out` agree on; fail if they are mixed, partial or
    left over, or staging of a writer is visible."""
    from regtool.geometry.mesh import load_mesh
    from regtool.registration.figures import BAR_HEIGHT

    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert visible - {"notes.txt"} == RESULT_FILES, visible
    run_id = int(json.loads((out / "result.json").read_text())["z"][0])
    sphere = np.asarray(trimesh.creation.icosphere(subdivisions=1, radius=0.05).vertices)
    for name in ("deformed.ply", "deformed.obj"):
        np.testing.assert_allclose(load_mesh(out / name).vertices, sphere * run_id, atol=1e-6,
                                   err_msg=name)
    grey = round(run_id / 100.0 * 255)
    # The observation panel of the overlay figure, below its title bar.
    panel = iio.imread(out / "overlay.png")[BAR_HEIGHT:BAR_HEIGHT + H, :W]
    assert abs(panel.mean() - grey) < 1.0
    assert abs(iio.imread(out / "optimisation.gif")[0][:, :, :3].mean() - grey) < 2.0
    # Links all lead into one generation (plain files of an earlier version, checked above by
    # content, are replaced by links to the same bytes one by one).
    assert len({Path(os.path.realpath(out / n)).parent for n in RESULT_FILES
                if (out / n).is_symlink()}) <= 1
    return run_id


def _assert_clean(out: Path) -> None:
    """Only the set's link and its one generation in the hidden folder, no staging anywhere."""
    sets = sorted(p.name for p in (out / SETS).iterdir())
    assert len(sets) == 2 and sets[0] == "registration", sets
    assert not any(p.name.endswith((".tmp", ".old")) for p in out.rglob("*")), \
        sorted(str(p) for p in out.rglob("*"))


def _fork_killed_at(out: Path, run_id: int, kill_at: int) -> bool:
    """Write set `run_id` into `out` in a forked child that SIGKILLs itself just before its
    `kill_at`-th rename, link or folder removal; return True if it was killed."""
    import shutil

    pid = os.fork()
    if pid == 0:  # the child
        try:
            calls = {"n": 0}

            def killing(real):
                def call(*args, **kwargs):
                    if calls["n"] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    calls["n"] += 1
                    return real(*args, **kwargs)
                return call

            os.rename, os.replace = killing(os.rename), killing(os.replace)
            os.symlink, os.link = killing(os.symlink), killing(os.link)
            shutil.rmtree = killing(shutil.rmtree)
            _write_set(out, run_id)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


@pytest.mark.parametrize("earlier", ["this version", "plain files of an earlier version"])
def test_kill_at_every_step_of_publishing_never_mixes_sets(tmp_path, earlier):
    """A kill before each rename / link / removal while publishing a result set into a folder
    with an earlier set: the folder always holds one whole set, the earlier or the new one; the
    next run removes what the killed one left."""
    out = tmp_path / "reg"
    if earlier == "this version":
        _write_set(out, 1)
    else:  # as the previous staged_output left it, with a killed run's staging folder
        _write_set(tmp_path / "plain", 1)
        out.mkdir()
        for name in RESULT_FILES:
            (out / name).write_bytes((tmp_path / "plain" / name).read_bytes())
        (out / ".staging.abc123.tmp").mkdir()
        (out / ".staging.abc123.tmp" / "deformed.obj").write_text("half")
    (out / "notes.txt").write_text("the user's")
    previous, kill_at, outcomes = _run_id_of_set(out), 0, []
    assert previous == 1
    while True:
        run_id = 10 + kill_at  # every run writes a set of its own
        killed = _fork_killed_at(out, run_id, kill_at)
        found = _run_id_of_set(out)
        if not killed:
            assert found == run_id  # the run that was not killed published its set
            break
        assert found in (previous, run_id), (kill_at, previous, run_id, found)
        outcomes.append("switched" if found == run_id else "kept")
        previous, kill_at = found, kill_at + 1
    assert kill_at >= 5, outcomes  # writes, renames, links, removals: each one a kill point
    assert {"kept", "switched"} <= set(outcomes), outcomes  # killed before and after the switch
    _assert_clean(out)
    assert (out / "notes.txt").read_text() == "the user's"


def test_a_set_without_a_file_of_the_earlier_set(tmp_path):
    from regtool.registration.result import write_registration

    out = tmp_path / "reg"
    _write_set(out, 1)
    args = _set_args(2)
    args["frames"] = None
    write_registration(out, **args)
    assert not os.path.lexists(out / "optimisation.gif")  # not the earlier run's GIF
    assert json.loads((out / "result.json").read_text())["z"][0] == 2.0
    _write_set(out, 3)
    assert _run_id_of_set(out) == 3
    _assert_clean(out)


# --- 4. evaluate's worker processes end with it ----------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # [state, ppid, ...]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _assert_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    alive = [p for p in pids if _alive(p)]
    for p in alive:  # do not leave them behind for the next tests
        os.kill(p, signal.SIGKILL)
    assert not alive, f"still running {timeout_s} s after their parent was killed: {alive}"


POOL_SCRIPT = textwrap.dedent("""
    import os, sys, time

    from regtool.evaluation.run import worker_pool


    def pid_after(seconds):
        time.sleep(seconds)
        return os.getpid()


    if __name__ == "__main__":
        with worker_pool(2) as pool:
            pids = set()
            while len(pids) < 2:  # both workers started and initialised
                pids |= {f.result() for f in [pool.submit(pid_after, 0.5) for _ in range(2)]}
            busy = [pool.submit(pid_after, 600) for _ in range(2)]
            print(" ".join(map(str, sorted(pids))), flush=True)
            time.sleep(600)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "pool_script.py"
    script.write_text(POOL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2, line
        children = _children(proc.pid)  # the workers and multiprocessing's resource tracker
        assert set(workers) <= set(children) and len(children) == 3, children
    finally:
        proc.kill()
        proc.wait()
    _assert_gone(children, timeout_s=5.0)


# --- slow: real commands killed at random moments --------------------------------------------

@pytest.fixture(scope="module")
def small_artifacts(tmp_path_factory, repo_root):
    """A small bottle dataset (3 train, 2 test), its shape space, a U-Net trained 60 steps, an
    observation (PNG, camera and pose JSON) and a config (canonical start, GIF on): built once for
    the module."""
    from regtool.config import MakeDatasetConfig, config_to_dict, load_config
    from regtool.data.generate import make_dataset
    from regtool.features.train import train_unet
    from regtool.geometry.camera import CameraIntrinsics, Pose
    from regtool.shapespace.build import build_shapespace

    d = tmp_path_factory.mktemp("small_artifacts")
    make_dataset(d / "ds", MakeDatasetConfig(categories=("bottle",), n_train=3, n_test=2,
                                             contact_sheet=False), seed=0)
    cfg = load_config(repo_root / "configs" / "quick.toml")
    cfg = replace(cfg,
                  shapespace=replace(cfg.shapespace, template_points=200, target_points=200,
                                     max_iterations=10),
                  # The registration tests' network (conftest.py there): at depth 4 or after a
                  # few steps it finds no bottle in obs.png, and register stops at once.
                  unet=replace(cfg.unet, depth=3, steps=60, val_views=8, val_every=60,
                               checkpoint_every=60),
                  register=replace(cfg.register, iterations=2, gif=True, start="canonical"))
    space, report = build_shapespace(d / "ds", "bottle", cfg.shapespace, seed=0)
    space.save(d / "ss.npz", report)
    train_unet(d / "ds", "bottle", cfg.unet, cfg.render, d / "unet.pt", seed=0)
    cam = CameraIntrinsics.from_fov(cfg.unet.image_width, cfg.unet.image_height, 40.0)
    (d / "camera.json").write_text(json.dumps(cam.to_dict()))
    (d / "pose.json").write_text(json.dumps(Pose.look_at(0.6, 30.0, 20.0).to_dict()))
    for name, c in (("config.toml", cfg),
                    ("evaluate.toml", replace(cfg, register=replace(cfg.register,
                                                                    iterations=200)))):
        lines = []
        for section, values in config_to_dict(c).items():
            lines += [f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
        (d / name).write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["render-view", "--mesh", str(d / "ds/bottle/test/"
                                                               "bottle_test_00.ply"),
                                 "--camera", str(d / "camera.json"), "--pose",
                                 str(d / "pose.json"), "--out", str(d / "obs.png")])
    assert result.exit_code == 0, result.output
    return d


CLI = [sys.executable, "-c", "from regtool.cli import main; main()"]


def _register_cmd(art: Path, out: Path, iterations: int, pose: Path | None = None
                  ) -> list[str]:
    return [*CLI, "register", "--shapespace", str(art / "ss.npz"), "--unet",
            str(art / "unet.pt"), "--image", str(art / "obs.png"), "--camera",
            str(art / "camera.json"), "--pose", str(pose or art / "pose.json"), "--out",
            str(out), "--config", str(art / "config.toml"), "--iterations", str(iterations)]


def _registered_set(out: Path, space) -> tuple[float, ...]:
    """Return z of the one registration in `out`; fail if its files are mixed or partial."""
    from regtool.geometry.mesh import load_mesh

    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert visible == RESULT_FILES, visible
    record = json.loads((out / "result.json").read_text())
    expected = space.deform_numpy(record["z"])
    for name in ("deformed.ply", "deformed.obj"):
        np.testing.assert_allclose(load_mesh(out / name).vertices, expected, atol=1e-5,
                                   err_msg=name)
    assert record["iterations"] == len(record["losses"])
    parents = {Path(os.path.realpath(out / n)).parent for n in RESULT_FILES}
    assert len(parents) == 1, parents  # all from one generation
    return tuple(record["z"])


@pytest.mark.slow
@pytest.mark.gl
def test_register_killed_at_random_moments(small_artifacts, tmp_path):
    """SIGKILL of `regtool register` at random moments (20 trials, each from its own initial
    pose, so that every run's result differs) into a folder with an earlier result: always one
    whole set; the next run removes what killed runs left."""
    from regtool.geometry.camera import Pose
    from regtool.shapespace.space import ShapeSpace

    space = ShapeSpace.load(small_artifacts / "ss.npz")
    out = tmp_path / "reg"
    t0 = time.monotonic()
    subprocess.run(_register_cmd(small_artifacts, out, 1), check=True, capture_output=True)
    duration = time.monotonic() - t0
    z = _registered_set(out, space)
    rng = random.Random(12)
    outcomes = {"kept": 0, "switched": 0, "finished": 0}
    for trial in range(20):
        pose = tmp_path / f"pose_{trial}.json"
        pose.write_text(json.dumps(Pose.look_at(0.6, 31.0 + trial, 20.0).to_dict()))
        proc = subprocess.Popen(_register_cmd(small_artifacts, out, 2, pose),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.5) * duration)  # any moment, before or after the switch
        finished = proc.poll() is not None
        proc.kill()
        proc.wait()
        new_z = _registered_set(out, space)
        outcomes["finished" if finished else "kept" if new_z == z else "switched"] += 1
        z = new_z
    print(f"20 SIGKILLs of register ({duration:.1f} s a run): {outcomes}")
    subprocess.run(_register_cmd(small_artifacts, out, 1), check=True, capture_output=True)
    _registered_set(out, space)
    _assert_clean(out)


@pytest.mark.slow
@pytest.mark.gl
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_evaluate_killed_leaves_no_worker(small_artifacts, tmp_path):
    """SIGKILL of `regtool evaluate --workers 2` while its workers evaluate: they and the
    resource tracker end too."""
    art = small_artifacts
    cfg = art / "evaluate.toml"  # long registrations: the workers are busy when killed
    proc = subprocess.Popen([*CLI, "evaluate", "--dataset", str(art / "ds"), "--category",
                             "bottle", "--shapespace", str(art / "ss.npz"), "--unet",
                             str(art / "unet.pt"), "--out", str(tmp_path / "eval"),
                             "--config", str(cfg), "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        while time.monotonic() < deadline and len(children) < 3 and proc.poll() is None:
            time.sleep(0.2)
            children = _children(proc.pid)
        assert len(children) == 3, children  # 2 workers + the resource tracker
        time.sleep(15)  # the workers import and start evaluating
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    _assert_gone(children, timeout_s=5.0)
