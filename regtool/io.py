"""Atomic output: every artifact is written to a temporary sibling and renamed into place,
so an interrupted run never leaves a half-written file or folder.

Files and folders get the usual mode (0666 / 0777 less the process's umask). Result sets of
several files (`staged_output`) switch as a whole by one rename of a symbolic link.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from regtool.errors import OutputError, RegtoolError

_UMASK = os.umask(0)
os.umask(_UMASK)


def current_umask() -> int:
    """Return the process's umask: read from /proc/self/status (Linux, no race with other
    threads), else the umask the process had when this module was imported."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return _UMASK


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
        raise OutputError(f"cannot create output folder {path}: {exc.strerror or exc}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {path} is not writable")
    return path


def check_output_dir(path: Path) -> Path:
    """Return `path` if it is a writable folder or can be created as one; OutputError otherwise.
    Creates nothing (commands check their output before their inputs' work, and create the
    folder only when they write into it)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"cannot create output folder {path}: {parent} is not a folder")
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "output folder" if existing == path else "folder above the output"
        raise OutputError(f"{what} {existing} is not writable")
    return path


def check_output_file(path: Path) -> Path:
    """Return `path` if a file can be written there (not an existing folder; its folder exists
    or can be created and is writable); OutputError otherwise. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"output {path} is a folder: give a file name")
    check_output_dir(path.parent)
    return path


def make_temp_dir(parent: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """Create and return a new, uniquely named folder `parent/<prefix><random><suffix>` with the
    usual mode (0777 less the umask; `tempfile.mkdtemp` would make it 0700)."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def write_atomic(path: Path, writer: Callable[[Path], Any]) -> Path:
    """Call `writer(tmp_path)` then rename the temporary file onto `path`; return `path`.

    The temporary file keeps `path`'s suffix so writers that infer the format from it work.
    """
    path = Path(path)
    check_output_file(path)
    ensure_writable_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; the usual mode
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


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths `a` and `b` atomically (Linux renameat2 with RENAME_EXCHANGE) and return
    True; False, with nothing changed, where the system or the file system does not offer it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_dir(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a new temporary folder (usual mode) next to `path`; on success it replaces `path`
    (one atomic exchange where the system offers it, else two renames), on error it is removed
    and `path` is untouched. OutputError if `path` has no name (e.g. "/"), or exists and
    `overwrite` is False or it is not a folder (a file or a symbolic link is never replaced)."""
    path = Path(os.path.abspath(path))
    if not path.name:
        raise OutputError(f"cannot replace {path}: give a folder name")
    ensure_writable_dir(path.parent)
    tmp = make_temp_dir(path.parent, f".{path.name}.")
    try:
        yield tmp
        if os.path.lexists(path):
            if not overwrite:
                raise OutputError(f"output {path} already exists")
            if path.is_symlink() or not path.is_dir():
                raise OutputError(f"output {path} exists and is not a folder")
            if not _exchange(tmp, path):
                old = make_temp_dir(path.parent, f".{path.name}.", ".old")
                os.replace(path, old)  # onto the empty folder `old`
                os.replace(tmp, path)
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)  # now the previous content
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


SETS_DIR = ".regtool-sets"  # hidden folder holding the result sets inside an output folder


@contextlib.contextmanager
def staged_output(out_dir: Path, set_name: str = "output") -> Iterator[Path]:
    """Yield an empty staging folder for one result set (flat files) and publish the set in
    `out_dir` on normal exit; on an exception nothing in `out_dir` changes (and `out_dir` is
    removed again if this call created it).

    Published layout: each file of the set is `out_dir/<name>`, a relative symbolic link to
    `.regtool-sets/<set_name>/<name>`, and `.regtool-sets/<set_name>` links to the folder of the
    current generation, `.regtool-sets/<set_name>.<id>`. Publishing replaces that one link by a
    rename, so readers, and a run killed at any moment, see the whole old set or the whole new
    set, never a mix; names of the old set that the new one lacks disappear with it. Other files
    in `out_dir` are left alone; plain files named like a file of the set (as earlier versions
    wrote them) are taken over. Every call first removes what killed runs left behind (staging
    folders, unlinked generations, `.staging.*.tmp` folders of earlier versions).

    OutputError if `out_dir` cannot be created or written; OSError raised inside the block
    (disk full, permissions) becomes OutputError too.
    """
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    ensure_writable_dir(out_dir)
    sets = out_dir / SETS_DIR
    sets_created = not os.path.lexists(sets)
    lock = None
    try:
        sets.mkdir(exist_ok=True)
        remove_stale_staging(out_dir)
        stage = make_temp_dir(sets, f"{set_name}.")
        lock = _lock_dir(stage)
    except OSError as exc:
        _remove_if_empty(sets, sets_created)
        _remove_if_empty(out_dir, created)
        raise OutputError(f"cannot write into {out_dir}: {exc.strerror or exc}") from exc
    try:
        try:
            yield stage
            _publish(out_dir, stage, set_name)
        except OSError as exc:
            raise OutputError(f"cannot write into {out_dir}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_empty(sets, sets_created)
        _remove_if_empty(out_dir, created)
        raise
    finally:
        os.close(lock)
    with contextlib.suppress(OSError):
        remove_stale_staging(out_dir)  # the generation replaced just now


def remove_stale_staging(out_dir: Path) -> None:
    """Remove what killed `staged_output` runs left in `out_dir`: staging folders and temporary
    links in `.regtool-sets`, generations no set links to, and the `.staging.*.tmp` folders of
    earlier versions. Folders that a running writer holds locked are kept."""
    out_dir = Path(out_dir)
    sets = out_dir / SETS_DIR
    if sets.is_dir() and not sets.is_symlink():
        entries = list(sets.iterdir())
        live = {os.readlink(p) for p in entries if p.is_symlink()}
        for p in entries:
            if p.is_symlink():
                if p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
            elif p.is_dir() and p.name not in live:
                _remove_unlocked(p)
    for p in out_dir.glob(".staging.*.tmp"):
        if p.is_dir() and not p.is_symlink():
            _remove_unlocked(p)


def _lock_dir(path: Path) -> int:
    """Return an open descriptor holding an exclusive lock on the folder `path` (the lock follows
    the folder through renames and ends with the process, also on SIGKILL)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_unlocked(path: Path) -> None:
    """Remove the folder `path` unless a running process holds its lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


def _readlink(path: Path) -> str | None:
    """Return the target text of the symbolic link `path`, None if it is not one."""
    try:
        return os.readlink(path)
    except OSError:
        return None


def _replace_link(text: str, dest: Path, sets: Path) -> None:
    """Make `dest` a symbolic link with target `text`, replacing what is there by one rename."""
    tmp = sets / f".link.{secrets.token_hex(6)}.tmp"
    os.symlink(text, tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link `src` (following a symbolic link) to `dest`, or copy it where links fail."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _publish(out_dir: Path, stage: Path, set_name: str) -> None:
    """Turn the filled staging folder into the current generation of `set_name` (see
    `staged_output`); the switch is the one rename of the `set_name` link."""
    sets = stage.parent
    names = sorted(p.name for p in stage.iterdir())
    for name in names:
        if (out_dir / name).is_dir() and not (out_dir / name).is_symlink():
            raise OutputError(f"cannot write {out_dir / name}: it is a folder")
    text = {name: f"{SETS_DIR}/{set_name}/{name}" for name in names}
    pointer = sets / set_name
    gen = stage.with_name(stage.name[:-len(".tmp")])
    os.rename(stage, gen)  # the lock stays with the folder
    new_links = []
    try:
        taken = [n for n in names if os.path.lexists(out_dir / n)
                 and _readlink(out_dir / n) != text[n]]
        if taken:
            _adopt(out_dir, set_name, taken)
        for name in names:  # links to names only the new set has: missing until the switch
            if not os.path.lexists(out_dir / name):
                _replace_link(text[name], out_dir / name, sets)
                new_links.append(out_dir / name)
        _replace_link(gen.name, pointer, sets)  # the switch
    except BaseException:
        if _readlink(pointer) != gen.name:
            shutil.rmtree(gen, ignore_errors=True)
            for link in new_links:
                link.unlink(missing_ok=True)
        raise
    prefix = f"{SETS_DIR}/{set_name}/"
    for p in out_dir.iterdir():  # links to names of the old set the new one lacks
        target = _readlink(p)
        if target is not None and target.startswith(prefix) and not p.exists():
            p.unlink(missing_ok=True)


def _adopt(out_dir: Path, set_name: str, names: list[str]) -> None:
    """Make what readers see now one generation before the switch: the current generation's
    files and the files `names` found in `out_dir` (plain files of earlier versions) go into a
    new generation, the set links to it, then each of `names` is replaced by its link (same
    content, so readers see no change)."""
    sets = out_dir / SETS_DIR
    pointer = sets / set_name
    gen = make_temp_dir(sets, f"{set_name}.")
    lock = _lock_dir(gen)
    try:
        current = _readlink(pointer)
        if current is not None and (sets / current).is_dir():
            for p in (sets / current).iterdir():
                _link_or_copy(p, gen / p.name)
        for name in names:
            (gen / name).unlink(missing_ok=True)
            if (out_dir / name).is_file():
                _link_or_copy(out_dir / name, gen / name)
        final = gen.with_name(gen.name[:-len(".tmp")])
        os.rename(gen, final)
        _replace_link(final.name, pointer, sets)
        for name in names:
            _replace_link(f"{SETS_DIR}/{set_name}/{name}", out_dir / name, sets)
    finally:
        os.close(lock)


def _remove_if_empty(path: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            path.rmdir()


# --- JSON ------------------------------------------------------------------------------------

def to_jsonable(obj: Any) -> Any:
    """Return `obj` as plain JSON types: numpy arrays/scalars and CPU tensors -> lists/numbers,
    tuples -> lists,
    Paths -> str, dataclasses -> dicts, objects with a `to_dict()` (Pose, CameraIntrinsics)
    via it; non-finite floats (NaN, inf: e.g. a diverged loss) -> None, since JSON has no NaN."""
    if callable(getattr(obj, "to_dict", None)) and not isinstance(obj, Mapping):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "tolist"):  # torch tensors (detached) and similar
        return to_jsonable(obj.tolist())
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def json_bytes(obj: Any) -> bytes:
    """Return `obj` (after `to_jsonable`) as indented UTF-8 JSON with a trailing newline."""
    return (json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n").encode("utf-8")


def read_json(path: Path, what: str, error: type[RegtoolError]) -> dict[str, Any]:
    """Return the JSON object in the file `path`; `error` (the caller's layer's error class),
    naming `what` and the file, if it is missing, unreadable, not UTF-8 JSON or not an object.
    The one JSON reader of regtool."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} file {path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} file {path} must hold a JSON object")
    return data
