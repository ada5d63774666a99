"""Files on disk: written atomically (a reader never sees half a file; a crash or Ctrl-C leaves the
old file in place), hashed with sha256, and named from spec labels."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
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


@contextmanager
def atomic_file(path: Path | str) -> Iterator[BinaryIO]:
    """A binary file to write `path` through: a temporary file in the same folder that replaces
    `path` (os.replace) only if the block completes; otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


@contextmanager
def atomic_dir(out: Path | str) -> Iterator[Path]:
    """Build a folder in a temporary sibling; it replaces `out` only if the block completes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
