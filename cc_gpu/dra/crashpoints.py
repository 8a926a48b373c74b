"""Named points in the prepare, unprepare and reconciliation paths where a crash can be injected.

Each step of those paths calls `crashpoint("<name>")`. By default it does nothing. When the environment variable
`CC_GPU_CRASH_AT` names the point, the process kills itself with SIGKILL there, so reliability tests can prove that
every step is recoverable from the checkpoint. The list of names is `POINTS`, so a test can iterate over all of them.
"""

from __future__ import annotations

import os
import signal

ENV = "CC_GPU_CRASH_AT"
POINTS = (
    "prepare-after-started",
    "prepare-after-bind",
    "prepare-after-cdi",
    "prepare-after-completed",
    "unprepare-after-restore",
    "unprepare-after-cdi-removed",
    "reconcile-after-rollback",
)


def crashpoint(name: str) -> None:
    """Die here with SIGKILL if `CC_GPU_CRASH_AT` names this point; otherwise return at once."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
