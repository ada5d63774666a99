"""Errors a user can cause. The CLI prints their message alone, never a traceback."""

from __future__ import annotations

import errno


class MSWError(Exception):
    """A problem with the user's input (config, preset, path, file), stated with the fix."""


class ConfigError(MSWError):
    """A bad preset, strategy name, or config value."""


class DataError(MSWError):
    """A missing, corrupt or mismatched file on disk."""


# What the operating system says when a path the user gave cannot be used, and the fix. Other
# OSErrors (EIO, a broken pipe, ...) are not the user's and keep their traceback.
_OS_FIXES = {
    errno.EACCES: ("permission denied", "choose a path you may use, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a path you may use, or change its permissions"),
    errno.EROFS: ("read-only file system", "choose a path on a writable file system"),
    errno.ENOSPC: ("no space left on the device", "free some space or choose a path on another disk; "
                   "rerun the same command to resume"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose a path on another disk; "
                   "rerun the same command to resume"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose a path under a folder"),
    errno.EISDIR: ("is a folder where a file is needed", "give the path of a file"),
    errno.EEXIST: ("already exists and is not a folder", "choose another path or move that file away"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path (or a shorter strategy spec)"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ELOOP: ("too many levels of symbolic links", "fix the link or choose another path"),
}


def os_error_message(exc: OSError) -> str | None:
    """One line naming the path and the fix for an OSError a user's path causes (permissions, a
    file where a folder is needed, a full disk, ...); None for any other OSError."""
    if exc.errno not in _OS_FIXES:
        return None
    what, fix = _OS_FIXES[exc.errno]
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths)
    return f"{where}: {what}; {fix}" if where else f"{what}; {fix}"


def one_line(text: str) -> str:
    """The message on one line (an error is one line on stderr, whatever it quotes)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "(no message)"


def shown(value: object, limit: int = 60) -> str:
    """repr(value), cut to about `limit` characters, for quoting a user's input in a message."""
    text = repr(value) if len(str(value)) < 10 * limit else repr(str(value)[: 2 * limit])
    return text if len(text) <= limit else f"{text[: limit - 15]}...{text[-10:]} ({len(str(value))} characters)"
