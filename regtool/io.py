"""Atomic output: every artifact is written to a temporary sibling and renamed into place,
so an interrupted run never leaves a half-written file or folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from regtool.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed; OutputError if it cannot be created or written."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot create output folder {path}: {parent} is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {path} is not writable")
    return path


def write_atomic(path: Path, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` then rename the temporary file onto `path`; return `path`.

    The temporary file keeps `path`'s suffix so writers that infer the format from it work.
    """
    path = Path(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return write_atomic(path, lambda p: p.write_bytes(data))


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON (UTF-8, trailing newline) to `path` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path`, on error it is
    removed and `path` is untouched."""
    path = Path(path)
    ensure_writable_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise OutputError(f"output {path} already exists")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a hidden staging folder inside `out_dir`; write files (flat, no sub-folders needed)
    into it. On normal exit every staged entry is renamed into `out_dir` (replacing a file of
    the same name); on an exception the staging folder is removed, nothing in `out_dir` changes,
    and `out_dir` itself is removed again if this call created it and it is still empty.

    OutputError if `out_dir` cannot be created or written; OSError raised inside the block
    (disk full, permissions) becomes OutputError too.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    ensure_writable_dir(out_dir)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".tmp", dir=out_dir))
    except OSError as exc:
        _remove_if_empty(out_dir, created)
        raise OutputError(f"cannot write into {out_dir}: {exc.strerror or exc}") from None
    try:
        try:
            yield stage
            for entry in sorted(stage.iterdir()):
                os.replace(entry, out_dir / entry.name)
        except OSError as exc:
            raise OutputError(f"cannot write into {out_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_empty(out_dir, created)
        raise
    shutil.rmtree(stage, ignore_errors=True)


def _remove_if_empty(path: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            path.rmdir()
