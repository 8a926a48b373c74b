"""Where the host's filesystems are, injected everywhere instead of hard-coded `/sys` or `/dev`.

The same code runs on a node (prefix `/`), in a container with the host mounted at `/host`, on the simulated kernel
(prefix = the sim tree) and in a QEMU guest. Nothing in the host layer builds a path from an absolute constant: it
joins one of these roots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "var/lib/cc-gpu"


@dataclass(frozen=True)
class HostRoots:
    """Root directories of the host's sysfs, /dev, /proc, /lib/modules and the plugin's state directory."""

    sysfs: Path
    dev: Path
    proc: Path
    modules: Path
    state: Path

    @classmethod
    def under(cls, prefix: Path | str = "/", state: Path | str | None = None) -> HostRoots:
        """All roots below one prefix: `/` on a node, `/host` in a container, a sim tree in tests."""
        base = Path(prefix)
        return cls(
            sysfs=base / "sys",
            dev=base / "dev",
            proc=base / "proc",
            modules=base / "lib" / "modules",
            state=Path(state) if state is not None else base / DEFAULT_STATE_DIR,
        )

    # Frequently used places, so callers never spell sysfs layout twice.
    @property
    def pci_devices(self) -> Path:
        return self.sysfs / "bus" / "pci" / "devices"

    @property
    def pci_drivers(self) -> Path:
        return self.sysfs / "bus" / "pci" / "drivers"

    @property
    def iommu_groups(self) -> Path:
        return self.sysfs / "kernel" / "iommu_groups"
