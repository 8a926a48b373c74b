"""Named points in every state-changing path where a crash can be injected, and the registry of their names.

A GPU left on vfio-pci, or a CDI spec naming a device nobody prepared, must never survive a crash of the plugin. To
prove that, each step of prepare, unprepare, startup reconciliation, the host binder and slice publishing calls
`crashpoint("<name>")`. Normally that is one dictionary lookup and nothing happens. When the environment variable
`CC_GPU_CRASH_AT` is `<name>` or `<name>:<n>`, the process kills itself with SIGKILL at the first (or n-th) time it
passes that point: no `finally`, no atexit, exactly like the OOM killer or a node power cut. When
`CC_GPU_CRASH_TRACE` names a file, every point passed is appended to it, one name a line, so a test can learn which
points a scenario goes through before killing the process at each of them.

Both variables are read once, at the first call. The module sits at the package root because the host layer and the
plugin both call it and neither may import the other's code.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from dataclasses import dataclass

ENV = "CC_GPU_CRASH_AT"
TRACE_ENV = "CC_GPU_CRASH_TRACE"

# Every point, with the state it leaves behind when the process dies there.
POINTS: dict[str, str] = {
    # prepare (cc_gpu.dra.state)
    "prepare-after-started": "checkpoint says PrepareStarted, nothing bound yet",
    "prepare-after-bind-group": "one more IOMMU group of the claim is on vfio, the claim not finished",
    "prepare-after-bind": "every group bound, no CDI spec yet",
    "prepare-after-cdi": "CDI spec written, checkpoint still PrepareStarted",
    "prepare-after-completed": "checkpoint says PrepareCompleted, per-pod CDI spec not refreshed, kubelet not answered",
    # unprepare (cc_gpu.dra.state)
    "unprepare-after-marked": "checkpoint says UnprepareStarted, devices still bound",
    "unprepare-after-restore": "devices back on their original drivers, CDI spec and checkpoint entry still there",
    "unprepare-after-cdi-removed": "CDI spec gone, checkpoint entry still there",
    "unprepare-after-dropped": "checkpoint entry gone, per-pod CDI spec not refreshed",
    # startup reconciliation (cc_gpu.dra.state)
    "reconcile-after-rollback": "one half-done claim rolled back at startup, others not yet",
    "reconcile-after-orphans": "orphan CDI specs removed, per-pod specs not yet refreshed",
    # atomic file writes: checkpoint and CDI specs (cc_gpu.dra.checkpoint)
    "atomic-write-before-rename": "new content fsynced in a temp file beside the target, not yet renamed over it",
    # group binder (cc_gpu.host.binder)
    "bind-after-record": "bind record persisted in phase binding, no sysfs write yet",
    "bind-after-unbind": "a group member unbound from its original driver, not yet given to vfio",
    "bind-after-override": "a member's driver_override set to vfio, not yet bound",
    "bind-after-member": "one more member of the group bound to vfio",
    "bind-after-nodes": "the group's VFIO device nodes exist, record still in phase binding",
    "restore-after-marked": "record in phase restoring, no sysfs write yet",
    "restore-after-unbind": "a member unbound from vfio, not yet back on its original driver",
    "restore-after-member": "one more member back on its original driver",
    "restore-before-delete": "every member restored, the record not yet deleted",
    # slice publishing (cc_gpu.dra.slices)
    "publish-after-write": "one more ResourceSlice written, the pool not yet complete",
}


@dataclass(frozen=True)
class _Plan:
    name: str | None
    count: int
    trace: str | None


_hits: dict[str, int] = {}
_lock = threading.Lock()


def parse(value: str | None) -> tuple[str | None, int]:
    """`name` or `name:n` -> (name, n); an unknown name or a bad count is a `ValueError` (a typo must not pass)."""
    if not value:
        return None, 0
    name, _, count = value.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}: unknown crash point {name!r}")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV}: count {count!r} is not a number") from None
    if n < 1:
        raise ValueError(f"{ENV}: count must be at least 1, not {n}")
    return name, n


@functools.cache
def _load() -> _Plan:
    name, count = parse(os.environ.get(ENV))
    return _Plan(name, count, os.environ.get(TRACE_ENV) or None)


def crashpoint(name: str) -> None:
    """Die here with SIGKILL if `CC_GPU_CRASH_AT` names this point (and hit count); otherwise return at once."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    plan = _load()
    if plan.name is None and plan.trace is None:
        return
    with _lock:
        _hits[name] = hit = _hits.get(name, 0) + 1
        if plan.trace is not None:
            with open(plan.trace, "a", encoding="utf-8") as f:
                f.write(name + "\n")
                f.flush()
                os.fsync(f.fileno())
        if name == plan.name and hit == plan.count:
            os.kill(os.getpid(), signal.SIGKILL)
