"""Atomic file writes: the one way cc-gpu replaces a file another process may read at any moment.

Kata reads CDI specs from the CDI root whenever a pod starts, a restarted plugin reads the checkpoint, relying parties
read token files: each must see the old file or the new one, never a partial one, also across a crash. So every such
write goes through `write_atomic` (temp file beside the target, fsync, rename, fsync of the directory), and startup
sweeps the temp files that a killed writer left behind with `remove_stale_temps`.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

from cc_gpu.crashpoints import crashpoint
from cc_gpu.errors import PermanentError

# A name that may become one path component of a file the plugin writes per claim or pod (a claim UID, a CDI device
# name): no separator, no `..`, nothing a CDI name forbids. One check for every such file (CDI specs, token files).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")


class UnsafeNameError(PermanentError):
    """A name from the API (a claim UID, a pod device) cannot name a file: it could escape its directory."""

    reason = "claim"


def safe_name(value: str) -> str:
    """`value` if it can be one path component of a per-claim file; otherwise `UnsafeNameError`."""
    if not _SAFE_NAME.match(value) or ".." in value:
        raise UnsafeNameError(f"{value[:80]!r} cannot name a file")
    return value


def safe_child(directory: Path, name: str) -> Path:
    """`directory/name` after `safe_name`, so a hostile name never writes or removes outside `directory`."""
    return directory / safe_name(name)


def write_atomic(path: Path, content: bytes, mode: int = 0o600) -> None:
    """Write `content` to `path` so a reader sees the old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        crashpoint("atomic-write-before-rename")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(directory: Path, prefix: str) -> int:
    """Remove temp files `write_atomic` left behind for targets starting with `prefix` when their writer died.

    The writer's pid is part of the temp name; a file whose writer is alive may be mid-write and is kept.
    """
    removed = 0
    if not directory.is_dir():
        return removed
    for tmp in directory.glob(f".{prefix}*.tmp"):
        parts = tmp.name.split(".")
        try:
            pid = int(parts[-3])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
