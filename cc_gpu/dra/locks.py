"""Per-IOMMU-group locks that serialise two operations on one group, across threads and across processes.

No node-wide lock: claims on different groups prepare in parallel. Two operations on the same group (two claims, or
the two plugin processes of a rolling update) serialise on an flock'ed file `group-<N>.lock` in the plugin directory.
Locks are always taken in ascending group order, so a claim that spans several groups cannot deadlock with another.
Waiting is bounded: after `timeout` seconds the operation fails with `ClaimBusyError` (a temporary error the kubelet
retries) instead of running into the kubelet's 45 s deadline behind a stuck holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from cc_gpu.dra.errors import ClaimBusyError

POLL = 0.01


class GroupLocks:
    """flock-based locks, one file per IOMMU group, plus an in-process lock per group (flock is per open file)."""

    def __init__(self, directory: Path, timeout: float = 30.0) -> None:
        self.directory = directory
        self.timeout = timeout
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._guard = threading.Lock()
        self._thread_locks: dict[int, threading.Lock] = {}

    def _thread_lock(self, group: int) -> threading.Lock:
        with self._guard:
            return self._thread_locks.setdefault(group, threading.Lock())

    @contextlib.contextmanager
    def hold(self, groups: Iterable[int]) -> Iterator[None]:
        """Hold the locks of every group in `groups` (sorted, deduplicated) for the duration of the block."""
        deadline = time.monotonic() + self.timeout
        with contextlib.ExitStack() as stack:
            for group in sorted(set(groups)):
                lock = self._thread_lock(group)
                if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    raise ClaimBusyError(f"IOMMU group {group} is busy with another operation in this process",
                                         retry_after=1.0)
                stack.callback(lock.release)
                fd = os.open(self.directory / f"group-{group}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                stack.callback(os.close, fd)
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise ClaimBusyError(
                                f"IOMMU group {group} is busy with another operation (lock held by another process)",
                                retry_after=1.0,
                            ) from None
                        time.sleep(POLL)
            yield
