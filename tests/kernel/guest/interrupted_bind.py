"""Child process of the kill-mid-bind case: runs a real bind and SIGKILLs itself right after the kernel has
unbound the given device and before it is bound to vfio-pci, leaving the torn state a crash would leave.

The kill point is found by wrapping the host layer's one write adapter, so the binder code is the real one.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import project

from cc_gpu.host.binder import Binder


class KillAfterUnbind:
    def __init__(self, inner: object, bdf: str) -> None:
        self._inner = inner
        self._bdf = bdf

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def write_text(self, path: Path, data: str) -> None:
        self._inner.write_text(path, data)  # type: ignore[attr-defined]
        if path.name == "unbind" and data.strip() == self._bdf:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    group, bdf = int(sys.argv[1]), sys.argv[2]
    real = project.binder(project.FOREIGN_RNG)
    host = replace(real.host, io=KillAfterUnbind(real.host.io, bdf))
    Binder(host, real.policy).bind(group, project.OWNER)
    print(f"bind of group {group} finished without unbinding {bdf}")


if __name__ == "__main__":
    main()
