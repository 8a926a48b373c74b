"""Is a GPU in use? Processes holding its /dev/nvidia<minor> node, found through the host's /proc.

Unbinding the nvidia driver under a process that holds the device blocks until the process lets go; a monitoring agent
(dcgm-exporter, nvidia-persistenced) can hold it forever. So the binder checks first, waits a bounded time, and
refuses with the list of PIDs. The GPU's minor number comes from `/proc/driver/nvidia/gpus/<bdf>/information`; the
fd links under `/proc/<pid>/fd` name host paths (`/dev/nvidiaN`) whatever root we run under, which is why a container
needs hostPID or the host's /proc mounted. A process in our own mount namespace that opened the node through the dev
root (`<dev root>/nvidiaN`, when the host's /dev is mounted elsewhere) shows that path instead, so both count.

Our own process is not exempt. A descriptor we hold on the GPU blocks the unbind exactly like anyone else's (the
driver waits for the last close, and the bind thread would hang), so ignoring our PID would turn a leaked NVML session
into a hang instead of a clear refusal. The plugin avoids holding one instead: NVML sessions are short and never
overlap a bind (`nvml.NvmlGate`).
"""

from __future__ import annotations

import re
from pathlib import Path

from cc_gpu.host.fsio import HostIO
from cc_gpu.host.roots import HostRoots

_MINOR = re.compile(r"^Device Minor:\s*(\d+)", re.MULTILINE)


def nvidia_minor(io: HostIO, roots: HostRoots, bdf: str) -> int | None:
    """The GPU's minor number under the nvidia driver, or None when the driver does not manage it."""
    try:
        text = io.read_text(roots.proc / "driver" / "nvidia" / "gpus" / bdf / "information")
    except OSError:
        return None
    m = _MINOR.search(text)
    return int(m.group(1)) if m else None


def holders(io: HostIO, roots: HostRoots, node: str, *aliases: str) -> list[int]:
    """PIDs with an open descriptor on the host path `node` (e.g. `/dev/nvidia3`) or any of its `aliases`."""
    names = {node, *aliases}
    pids: list[int] = []
    try:
        entries = io.listdir(roots.proc)
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        fd_dir = roots.proc / entry / "fd"
        try:
            fds = io.listdir(fd_dir)
        except OSError:  # the process exited, or we may not look
            continue
        for fd in fds:
            try:
                target = io.readlink(Path(fd_dir, fd))
            except OSError:
                continue
            if target in names:
                pids.append(int(entry))
                break
    return sorted(pids)


def gpu_holders(io: HostIO, roots: HostRoots, bdf: str) -> list[int]:
    minor = nvidia_minor(io, roots, bdf)
    if minor is None:
        return []
    return holders(io, roots, f"/dev/nvidia{minor}", str(roots.dev / f"nvidia{minor}"))
