"""Child process of the restore-while-in-use case: one `restore` of a group, as the plugin's unprepare would run it.

Exit 0: restored; exit 1: refused with one of the project's typed errors (printed). Runs apart from the harness
because the kernel may block it in an uninterruptible write for as long as a process holds the device.
"""

from __future__ import annotations

import sys

import project

from cc_gpu.errors import CcGpuError


def main() -> int:
    try:
        project.binder().restore(int(sys.argv[1]), project.OWNER)
    except CcGpuError as e:
        print(f"{type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
