"""The host layer: the only code that reads or writes sysfs, /dev, /proc, NVML and netlink, through injected roots.

Entry points: `Host` (adapters + roots; `Host.real(...)` or `cc_gpu.host.sim.create_sim_host(...)`),
`cc_gpu.host.discovery.discover`, `cc_gpu.host.binder.Binder`, `cc_gpu.host.tee.read_host_tee`.
"""

from cc_gpu.host.host import Host
from cc_gpu.host.roots import HostRoots

__all__ = ["Host", "HostRoots"]
