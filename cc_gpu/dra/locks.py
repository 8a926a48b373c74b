"""Per-IOMMU-group locks that serialise two operations on one group, across threads and across processes.

No node-wide lock: claims on different groups prepare in parallel. Two operations on the same group (two claims, or
the two plugin processes of a rolling update) serialise on an flock'ed file `group-<N>.lock` in the plugin directory.
Locks are always taken in ascending group order, so a claim that spans several groups cannot deadlock with another.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path


class GroupLocks:
    """flock-based locks, one file per IOMMU group, plus an in-process lock per group (flock is per open file)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._guard = threading.Lock()
        self._thread_locks: dict[int, threading.Lock] = {}
        self._named: dict[str, threading.Lock] = {}

    def _thread_lock(self, group: int) -> threading.Lock:
        with self._guard:
            return self._thread_locks.setdefault(group, threading.Lock())

    @contextlib.contextmanager
    def hold_named(self, name: str) -> Iterator[None]:
        """Hold a lock that is not a group's (`<name>.lock`), e.g. for a file several claims write."""
        with self._guard:
            lock = self._named.setdefault(name, threading.Lock())
        with lock:
            fd = os.open(self.directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def hold(self, groups: Iterable[int]) -> Iterator[None]:
        """Hold the locks of every group in `groups` (sorted, deduplicated) for the duration of the block."""
        with contextlib.ExitStack() as stack:
            for group in sorted(set(groups)):
                lock = self._thread_lock(group)
                lock.acquire()
                stack.callback(lock.release)
                fd = os.open(self.directory / f"group-{group}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                stack.callback(os.close, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
