"""`Host`: the bundle of adapters and roots every host-layer function takes.

Built in exactly two places: `Host.real(...)` by the CLI (the node, a container's host mount, a QEMU guest) and
`cc_gpu.host.sim.create_sim_host(...)` for tests and the demo. Everything below takes a `Host` and never asks which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cc_gpu.host.clock import Clock, SystemClock
from cc_gpu.host.fsio import HostIO, RealHostIO
from cc_gpu.host.nvml import NoNvml, Nvml, PynvmlReader
from cc_gpu.host.roots import HostRoots
from cc_gpu.host.uevents import NetlinkUevents, UeventSource


@dataclass(frozen=True)
class Host:
    roots: HostRoots
    io: HostIO
    uevents: UeventSource
    nvml: Nvml
    clock: Clock

    @classmethod
    def real(
        cls,
        prefix: Path | str = "/",
        *,
        sysfs: Path | str | None = None,
        dev: Path | str | None = None,
        proc: Path | str | None = None,
        modules: Path | str | None = None,
        state: Path | str | None = None,
        use_nvml: bool = True,
    ) -> Host:
        """The real host under `prefix`, each root overridable on its own."""
        base = HostRoots.under(prefix, state=state)
        roots = HostRoots(
            sysfs=Path(sysfs) if sysfs else base.sysfs,
            dev=Path(dev) if dev else base.dev,
            proc=Path(proc) if proc else base.proc,
            modules=Path(modules) if modules else base.modules,
            state=base.state,
        )
        return cls(roots, RealHostIO(), NetlinkUevents(), PynvmlReader() if use_nvml else NoNvml(), SystemClock())
