"""The simulated host: a named topology on disk, its kernel model, and a `Host` wired to it.

`create_sim_host(topology, root)` is idempotent: an existing tree at `root` keeps its state (drivers bound, records in
the state directory), so several processes, or a process restarted after a crash, share one simulated node. Tests and
the demo use the same thing; `SimKernel(root)` (or `sim_kernel(host)`) reaches the knobs.
"""

from __future__ import annotations

from pathlib import Path

from cc_gpu.host.clock import SystemClock
from cc_gpu.host.host import Host
from cc_gpu.host.roots import HostRoots
from cc_gpu.host.sim.kernel import SimHostIO, SimKernel, SimNvml, SimUevents
from cc_gpu.host.sim.topologies import TOPOLOGY_BUILDERS, SimTopology, build

TOPOLOGIES: tuple[str, ...] = tuple(TOPOLOGY_BUILDERS)
DEFAULT_TOPOLOGY = "dgx-h100"


class UnknownTopologyError(ValueError):
    pass


def topology(name: str) -> SimTopology:
    try:
        return TOPOLOGY_BUILDERS[name]()
    except KeyError:
        choices = ", ".join(TOPOLOGIES)
        raise UnknownTopologyError(f"unknown simulated topology {name!r}; choose one of {choices}") from None


def create_sim_host(topology_name: str, root: Path | str, state: Path | str | None = None) -> Host:
    """A `Host` on the simulated node at `root`, building the tree if it does not exist yet."""
    root = Path(root)
    kernel = SimKernel(root)
    if not kernel.exists():
        build(topology(topology_name), root)
    else:
        existing = kernel.load().get("topology")
        if existing != topology_name:
            raise UnknownTopologyError(f"{root} already holds simulated topology {existing!r}, not {topology_name!r}")
    return Host(HostRoots.under(root, state=state), SimHostIO(kernel), SimUevents(kernel), SimNvml(kernel),
                SystemClock())


def sim_kernel(host: Host) -> SimKernel:
    """The kernel model behind a simulated host (for its knobs)."""
    if not isinstance(host.io, SimHostIO):
        raise TypeError("not a simulated host")
    return host.io.kernel


__all__ = ["DEFAULT_TOPOLOGY", "TOPOLOGIES", "SimKernel", "UnknownTopologyError", "create_sim_host", "sim_kernel"]
