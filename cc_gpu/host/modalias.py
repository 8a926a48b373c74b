"""Choosing the vfio driver for a device from `modules.alias`, as modprobe would.

Some GPUs need a vendor variant of vfio-pci (e.g. `nvgrace_gpu_vfio_pci` on Grace-Hopper). The kernel advertises
them as `alias vfio_pci:<pattern> <module>` lines; the most specific pattern (fewest wildcards) matching the device's
`modalias` wins, and plain `vfio-pci` is the fallback.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from cc_gpu.host.fsio import HostIO
from cc_gpu.host.roots import HostRoots

DEFAULT_VFIO_DRIVER = "vfio-pci"


@dataclass(frozen=True)
class VfioAlias:
    pattern: str
    module: str


def parse_vfio_aliases(text: str) -> list[VfioAlias]:
    """The `vfio_pci:` aliases in a modules.alias file; other lines are ignored."""
    out: list[VfioAlias] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias" and parts[1].startswith("vfio_pci:"):
            out.append(VfioAlias("pci:" + parts[1].removeprefix("vfio_pci:"), parts[2]))
    return out


def choose_vfio_module(aliases: list[VfioAlias], modalias: str) -> str:
    """The module for a device's modalias: fewest wildcards wins; `vfio-pci` when none matches."""
    matches = [a for a in aliases if modalias and fnmatch.fnmatchcase(modalias, a.pattern)]
    if not matches:
        return DEFAULT_VFIO_DRIVER
    best = min(matches, key=lambda a: (a.pattern.count("*"), a.module))
    return best.module


def driver_name_for_module(module: str) -> str:
    """The driver directory a module registers: variants keep `_`, vfio-pci spells itself with `-`."""
    return DEFAULT_VFIO_DRIVER if module in ("vfio_pci", "vfio-pci") else module


def load_aliases(io: HostIO, roots: HostRoots) -> list[VfioAlias]:
    """Aliases from `<modules>/<release>/modules.alias` for the running kernel (or the only release present)."""
    modules_root = roots.modules
    try:
        releases = io.listdir(modules_root)
    except OSError:
        return []
    try:
        running = io.read_text(roots.proc / "sys" / "kernel" / "osrelease").strip()
    except OSError:
        running = ""
    candidates = [running] if running in releases else releases
    aliases: list[VfioAlias] = []
    for rel in candidates:
        try:
            aliases += parse_vfio_aliases(io.read_text(modules_root / rel / "modules.alias"))
        except OSError:
            continue
    return aliases
