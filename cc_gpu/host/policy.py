"""The binder's policy and results: what may leave the host, which VFIO interface, how long to wait, what was bound.

Kept apart from the binder's mechanics so callers (the plugin, the CLI, the kernel tests) can build a policy and read
results without the sysfs sequence in view. The default policy lets only NVIDIA GPUs and their HD-audio functions
leave the host; anything else in a GPU's IOMMU group needs an explicit admin allow-list entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cc_gpu.host import pci
from cc_gpu.host.discovery import CLASS_3D, CLASS_VGA, DeviceFilter
from cc_gpu.host.pciids import NVIDIA
from cc_gpu.host.records import GroupRecord

CLASS_AUDIO = 0x0403
HOST_SAFE_DRIVERS = ("pcieport", "pci-stub")
BACKENDS = ("legacy", "prefer-iommufd")

# Functions that may leave the host without an admin's say: NVIDIA GPUs and their HD-audio functions.
NVIDIA_PASSTHROUGH = DeviceFilter(frozenset({NVIDIA}), frozenset({CLASS_VGA, CLASS_3D, CLASS_AUDIO}))


@dataclass(frozen=True)
class BindPolicy:
    """What may leave the host, which VFIO interface to use, and how long to wait."""

    allowed_devices: frozenset[str] = frozenset()  # admin allow-list: "0000:83:00.0", "15b3:1021" or "15b3:*"
    passthrough: DeviceFilter = NVIDIA_PASSTHROUGH
    backend: str = "legacy"
    bind_timeout: float = 10.0
    in_use_timeout: float = 5.0
    lock_timeout: float = 30.0
    poll_interval: float = 0.05

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")

    def may_leave_host(self, fn: pci.PciFunction) -> bool:
        if self.passthrough.matches(fn) or fn.bdf in self.allowed_devices or fn.ids in self.allowed_devices:
            return True
        return f"{fn.vendor_id:04x}:*" in self.allowed_devices


@dataclass(frozen=True)
class BoundDevice:
    bdf: str
    original_driver: str | None
    driver: str
    vfio_cdev: str | None


@dataclass(frozen=True)
class BoundGroup:
    """A group on vfio, with the host device nodes a CDI spec must name (never legacy and iommufd mixed)."""

    group: int
    owner: str
    backend: str  # "legacy" | "iommufd"
    devices: tuple[BoundDevice, ...]
    device_nodes: tuple[str, ...]  # /dev/vfio/<group>, or /dev/vfio/devices/vfioN per device
    control_nodes: tuple[str, ...]  # /dev/vfio/vfio, or /dev/iommu


@dataclass(frozen=True)
class MemberStatus:
    bdf: str
    ids: str
    class_code: int
    driver: str | None
    driver_override: str | None
    is_bridge: bool


@dataclass(frozen=True)
class GroupStatus:
    group: int
    members: tuple[MemberStatus, ...]
    owner: str | None
    phase: str | None
    viable: bool  # every member on vfio, a host-safe driver or none
    vfio_node: bool  # /dev/vfio/<group> exists
    record: GroupRecord | None = field(default=None, repr=False)
