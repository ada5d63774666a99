"""Files on disk: written atomically (a reader never sees half a file; a crash or Ctrl-C leaves the
old file in place), hashed with sha256, and named from spec labels.

No user file is ever removed: `atomic_dir` replaces only a folder that this package wrote (it holds
`OWNER_MARK` or a pipeline stage's `STAGE_FILE`) and refuses any other non-empty one. Temporary
folders carry the host and process id of their writer in their name, so the next writer of the same
folder can tell those of a killed process (removed) from those of one still running (left alone).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from medsafetyworld.errors import DataError


def path_safe(label: str) -> str:
    """A spec label as a folder name: `=` becomes `-`, parentheses and commas `_`, anything else
    outside [A-Za-z0-9_.+-] `_`: `curriculum(start=0.2,inner=filter)` -> `curriculum_start-0.2_inner-filter`."""
    slug = re.sub(r"[(),]+", "_", label.replace("=", "-")).strip("_")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", slug)


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise DataError(f"{path} not found; cannot hash it") from None
    return h.hexdigest()


def _file_mode() -> int:
    umask = os.umask(0o022)  # read it the only way POSIX offers: set it and put it back
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


@contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file in the same folder that replaces
    `path` (os.replace) only if the block completes; otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, _FILE_MODE)  # mkstemp makes 0600; a result is as readable as any file the user writes
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path | str, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and os.replace."""
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


STAGE_FILE = ".stage.json"  # a pipeline stage's marker, written into its folder when it finishes
# atomic_dir's mark in every folder it builds: an empty folder, not a file, so that it adds no file to
# what it built (a folder whose every file is checked, such as a leaderboard submission, stays valid)
OWNER_MARK = ".msw-output"
# this machine, for the names of temporary folders: a pid means something only on its own host
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(name: str) -> str:
    return f".{name}.{_HOST}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host runs (or may run: when in doubt, it counts as alive)."""
    if pid <= 0 or os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists and belongs to somebody else
        return True
    return True


def temp_dir(parent: Path | str, name: str) -> Path:
    """A new temporary folder in `parent` for building `name`: `.{name}.{host}-{pid}.{random}`."""
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(name), dir=parent))


def remove_stale_temps(parent: Path | str, name: str) -> list[Path]:
    """Remove the temporary folders that `temp_dir(parent, name)` made in processes of this host that
    are gone (killed mid-write, e.g. by SIGKILL); returns them. A temp folder of a process that still
    runs (another writer of the same folder at this moment) or of another host is left alone, as is
    anything whose name is not exactly that pattern."""
    parent = Path(parent)
    pattern = re.compile(rf"\.{re.escape(name)}\.([0-9a-f]{{8}})-(\d+)\.[a-z0-9_]+")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if (match is None or match[1] != _HOST or _pid_alive(int(match[2]))
                or entry.is_symlink() or not entry.is_dir()):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _check_replaceable(out: Path, shown: Path | str) -> None:
    """Raise DataError (naming `shown`, the path as the user gave it) unless `out` is missing, an
    empty folder, or a folder this package wrote."""
    if out.is_symlink():
        raise DataError(f"{shown} is a symbolic link; choose another --out (nothing was written)")
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{shown} exists and is a file, not a folder; choose another --out "
                        "(nothing was written)")
    if (out / OWNER_MARK).is_dir() or (out / STAGE_FILE).is_file():
        return
    # a subfolder of a stage's folder (a world's tokenizer/) written before OWNER_MARK existed
    if (out.parent / STAGE_FILE).is_file():
        return
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as exc:
        raise DataError(f"{shown} cannot be read ({exc.strerror}); choose another --out") from None
    if not empty:
        raise DataError(f"{shown} already exists and holds files that MedSafetyWorld did not write (it has "
                        f"no {STAGE_FILE}); they are left untouched. Choose another --out, or remove "
                        f"{shown} yourself if it is meant to be replaced")


@contextmanager
def atomic_dir(out: Path | str) -> Iterator[Path]:
    """Build a folder in a temporary sibling; it replaces `out` only if the block completes.

    `out` must be missing, an empty folder, or a folder written by this package (it holds
    `OWNER_MARK`, which every folder built here gets, or `STAGE_FILE`); anything else is refused with
    DataError before the block runs, and checked again before the swap. Temp siblings left by a
    killed earlier build of `out` are removed first (`remove_stale_temps`). The old `out` is moved
    aside, the new one renamed in, then the old one deleted: a crash in between leaves the old one in
    a temp sibling, which the next build removes."""
    shown, out = out, Path(os.path.abspath(out))  # absolute: `.` has a name and a parent
    _check_replaceable(out, shown)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent, out.name)
        tmp = temp_dir(out.parent, out.name)
    except OSError as exc:
        raise DataError(f"cannot write {shown} ({exc.strerror or exc}); choose another --out") from None
    try:
        yield tmp
        (tmp / OWNER_MARK).mkdir(exist_ok=True)
        _check_replaceable(out, shown)
        if out.exists():
            old = tmp.with_name(tmp.name + "_old")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
