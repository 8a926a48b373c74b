"""What the plugin needs from the host, seen from the plugin: one narrow Protocol and the plain records it returns.

The host layer (`cc_gpu.host`) owns sysfs, /dev and the binder; `hostport.py` adapts it to this interface. Keeping the
plugin's view this small lets the prepare path, the slice builder and the gate be tested and reasoned about without
the whole host layer, and keeps the host layer free to change its internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GpuView:
    """One advertised device: a GPU, or all GPUs of one IOMMU group when several share it."""

    name: str  # the ResourceSlice device name, stable, derived from the PCI address
    bdf: str  # the (first) GPU's PCI address
    gpus: tuple[str, ...]  # PCI addresses of the GPUs in this device
    members: tuple[str, ...]  # every PCI function of the IOMMU group
    iommu_group: int
    vendor_id: str
    device_id: str
    product_name: str
    architecture: str
    numa_node: int
    pcie_root: str
    iommufd: bool  # the node offers iommufd (/dev/iommu): the device can be passed as /dev/vfio/devices/vfioN
    cc_capable: bool
    cc_mode: str  # on | off | ppcie | devtools | unknown
    driver: str | None  # the GPU's current driver
    memory_bytes: int | None
    healthy: bool = True
    health_message: str = ""
    functions: int = 1  # PCIe functions of the group that go to the VM (bridges stay): each takes a root port in Kata
    attributes: Mapping[str, Any] = field(default_factory=dict)  # extra ResourceSlice attributes (attestation)
    taints: tuple[tuple[str, str], ...] = ()  # (key, value) of NoSchedule quarantine taints (`binding.Quarantine`)
    binding_conditions: bool = False  # publish the binding conditions (`bindcfg`): the plugin binds it before the pod


@dataclass(frozen=True)
class BoundNodes:
    """The result of binding one group: the host device nodes for CDI and the drivers the functions had before."""

    nodes: tuple[str, ...]
    original_drivers: Mapping[str, str | None]
    mode: str  # legacy | iommufd


class HostPort(Protocol):
    """The host operations the plugin uses."""

    def devices(self) -> list[GpuView]:
        """Discover the GPUs this plugin manages, as advertised devices."""
        ...

    def tee_enabled(self) -> bool:
        """Whether the node runs with SEV-SNP or TDX enabled."""
        ...

    def tee_kinds(self) -> tuple[str, ...]:
        """The TEEs enabled on the node: `sev-snp`, `tdx`."""
        ...

    def boot_id(self) -> str: ...

    def bind(self, group: int, owner: str, iommu_mode: str) -> BoundNodes:
        """Bind every function of `group` to vfio-pci for `owner` (a claim UID); idempotent for the same owner."""
        ...

    def restore(self, group: int, owner: str, reset: bool) -> None:
        """Reset the functions where the kernel can, then give every function back its recorded original driver."""
        ...

    def bound_groups(self) -> Mapping[int, str]:
        """Group -> owner of every group the host layer's own records say is bound or mid-operation."""
        ...
