"""The checkpoint and its side files as one consistent unit (issue 12, point 3): a run killed
between writing `unet.pt` and `unet.json` leaves side files that the readers recognise as stale,
temporary files of a killed run are removed by the next run, and SIGKILL at random moments
never leaves a half-written file or a checkpoint and metadata that silently disagree."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from clitools import tiny_config_text

import regtool.features.train as train_mod
from regtool.config import load_config
from regtool.errors import ArtifactError
from regtool.features.train import (
    read_report,
    side_file_stamp,
    side_paths,
    stale_side_files,
    train_unet,
)
from regtool.features.unet import load_unet, read_checkpoint
from regtool.io import sha256_file

pytestmark = pytest.mark.gl

KILL_CONFIG = tiny_config_text(steps=8, val_views=2, val_every=2, checkpoint_every=2,
                               render_workers=0, train_threads=1)


class Killed(BaseException):
    """Stands in for SIGKILL inside the process: nothing after it runs."""


def small_config(tiny_config):
    cfg = load_config(tiny_config)
    return cfg, dataclasses.replace(cfg.unet, steps=4, val_every=2, checkpoint_every=2,
                                    val_views=2, render_workers=0, train_threads=1)


def leftover_temp(folder: Path, stem: str, suffix: str, size: int = 400_000) -> Path:
    """A temporary file named exactly as io.write_atomic names them, as a kill leaves it."""
    fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=folder)
    os.write(fd, b"\0" * size)
    os.close(fd)
    return Path(name)


def test_kill_between_checkpoint_and_side_files(dataset_dir, tmp_path, tiny_config,
                                                 monkeypatch):
    """Deterministic variant of the kill test: die right after the step-4 checkpoint is renamed
    into place, before its JSON, curve and samples are written (the old step-2 ones remain)."""
    cfg, ucfg = small_config(tiny_config)
    out = tmp_path / "unet.pt"
    real_write_json = train_mod.write_json_atomic
    calls = []

    def dying_write_json(path, obj):
        calls.append(path)
        if len(calls) == 2:
            raise Killed
        return real_write_json(path, obj)

    monkeypatch.setattr(train_mod, "write_json_atomic", dying_write_json)
    with pytest.raises(Killed):
        train_unet(dataset_dir, "bottle", ucfg, cfg.render, out, seed=1)
    monkeypatch.setattr(train_mod, "write_json_atomic", real_write_json)

    assert read_checkpoint(out)["step"] == 4
    report = json.loads(side_paths(out)["json"].read_text())
    assert report["step"] == 2  # the mixed state of the issue, now detectable:
    assert sorted(stale_side_files(out)) == sorted(side_paths(out).values())
    with pytest.raises(ArtifactError, match="does not belong to the checkpoint"):
        read_report(out)
    _, meta = load_unet(out)  # the checkpoint itself is whole and authoritative
    assert meta["step"] == 4 and meta["metrics"]["step"] == 4

    # A killed checkpoint write of an earlier run left a temporary file; the next run into the
    # same place removes it and rewrites the side files for its own checkpoint.
    tmp_ckpt = leftover_temp(tmp_path, "unet", ".pt")
    tmp_json = leftover_temp(tmp_path, "unet", ".json", 10)
    other = tmp_path / ".notes.abcdefgh.tmp.pt"  # not ours: must stay
    other.write_bytes(b"x")
    train_unet(dataset_dir, "bottle", ucfg, cfg.render, out, seed=1, resume=True)
    assert not tmp_ckpt.exists() and not tmp_json.exists() and other.exists()
    assert stale_side_files(out) == []
    assert read_report(out)["checkpoint_stamp"] == (
        f"step=4 sha256={sha256_file(out)}")


def test_side_files_carry_the_checkpoint_stamp(tiny_unet):
    out, _ = tiny_unet
    stamp = f"step=400 sha256={sha256_file(out)}"
    assert [side_file_stamp(p) for p in side_paths(out).values()] == [stamp] * 3
    assert stale_side_files(out) == []
    assert read_report(out)["metrics"]["step"] == 400


def _check_consistent(out: Path) -> dict[str, int]:
    """Assert the files at `out` are whole and either agree with the checkpoint or are flagged
    stale by the readers; return counts of what was found."""
    found = {"checkpoint": 0, "stale": 0, "temps": 0}
    paths = side_paths(out)
    if out.parent.is_dir():
        found["temps"] = len([p for p in out.parent.iterdir() if ".tmp" in p.name])
    if not out.exists():
        assert not any(p.exists() for p in paths.values()), "side files without a checkpoint"
        return found
    found["checkpoint"] = 1
    blob = read_checkpoint(out)  # whole and verified (CRC + content hash), or this raises
    truth = f"step={blob['step']} sha256={sha256_file(out)}"
    stale = stale_side_files(out)
    from PIL import Image

    for kind, p in paths.items():
        if p.exists():  # whole files only
            if kind == "json":
                report = json.loads(p.read_text())
                stamp_step = int(report["checkpoint_stamp"].split()[0].split("=")[1])
                assert report["step"] == report["metrics"]["step"] == stamp_step
            else:
                with Image.open(p) as img:
                    img.load()
        agrees = p.exists() and side_file_stamp(p) == truth
        assert agrees == (p not in stale), (kind, truth, side_file_stamp(p))
    found["stale"] = int(bool(stale))
    if paths["json"] in stale:
        with pytest.raises(ArtifactError, match="does not belong to the checkpoint"):
            read_report(out)
    else:
        assert read_report(out)["checkpoint_stamp"] == truth
    return found


def _run(dataset_dir: Path, out: Path, config: Path) -> subprocess.Popen:
    """Start `regtool train-unet` in its own process group; stderr goes to `<out dir>.log`."""
    cmd = [str(Path(sys.executable).parent / "regtool"), "--seed", "3", "train-unet",
           "--dataset", str(dataset_dir), "--category", "bottle", "--out", str(out),
           "--config", str(config)]
    with open(out.parent.with_suffix(".log"), "ab") as log:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)


def _sigkill_trials(dataset_dir: Path, tmp_path: Path, trials: int, seed: int) -> list[dict]:
    """Kill `regtool train-unet` runs into one --out: even trials at a uniform random moment of
    a whole run, odd ones a random 0-1.5 s after the checkpoint was replaced (while its side
    files are being replaced)."""
    config = tmp_path / "kill.toml"
    config.write_text(KILL_CONFIG)
    out = tmp_path / "run" / "unet.pt"
    rng = random.Random(seed)
    t0 = time.monotonic()
    proc = _run(dataset_dir, out, config)  # calibration: an uninterrupted run
    assert proc.wait(timeout=600) == 0, out.parent.with_suffix(".log").read_text()[-2000:]
    t_full = time.monotonic() - t0
    outcomes = []
    for i in range(trials):
        before = sha256_file(out) if out.exists() else None
        proc = _run(dataset_dir, out, config)
        start = time.monotonic()
        if i % 2 == 0:
            moment = start + rng.uniform(0.2, t_full)
        else:  # wait for the checkpoint to be replaced (a new inode), then die soon after
            moment = None
            inode = out.stat().st_ino
            while proc.poll() is None and time.monotonic() < start + 2 * t_full:
                if out.stat().st_ino != inode:
                    moment = time.monotonic() + rng.uniform(0.0, 1.5)
                    break
                time.sleep(0.002)
        while proc.poll() is None and time.monotonic() < (moment or 0):
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with_group_cleaned(proc)
        found = _check_consistent(out)
        new = out.exists() and sha256_file(out) != before
        outcomes.append({"trial": i, "at": round(time.monotonic() - start, 2),
                         "finished": proc.returncode == 0, "new_checkpoint": new, **found})
    # The next (uninterrupted) run into the same place cleans up and leaves one current unit.
    proc = _run(dataset_dir, out, config)
    assert proc.wait(timeout=600) == 0, out.parent.with_suffix(".log").read_text()[-2000:]
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]
    assert stale_side_files(out) == []
    return outcomes


def with_group_cleaned(proc: subprocess.Popen) -> None:
    """Kill what is left of the process group this test started (render workers, if any)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_sigkill_train_unet_at_random_moments(dataset_dir, tmp_path):
    """SIGKILL of `regtool train-unet` at 24 random moments, all into the same --out: never a
    half-written file, never side files that disagree with the checkpoint unless the readers
    flag them stale; the final run removes every leftover temporary file."""
    outcomes = _sigkill_trials(dataset_dir, tmp_path, trials=24, seed=12)
    killed = [o for o in outcomes if not o["finished"]]
    print("\n".join(json.dumps(o) for o in outcomes))
    assert len(killed) >= 20, outcomes
    assert any(o["new_checkpoint"] for o in killed)  # kills landed during checkpointing
