"""Reading one PCI function from sysfs: IDs, class, driver, IOMMU group, NUMA node, SR-IOV, iommufd cdev.

Pure sysfs reads through `HostIO`; no decisions. Discovery and the binder both build on `read_function`, so they agree
on what a device is. A device that disappears between listing and reading raises `DeviceVanishedError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cc_gpu.host.errors import DeviceUnreadableError, DeviceVanishedError
from cc_gpu.host.fsio import HostIO
from cc_gpu.host.roots import HostRoots

CLASS_BRIDGE_PREFIX = 0x06  # base class "bridge"
CLASS_PCI_BRIDGE = 0x0604


@dataclass(frozen=True)
class PciFunction:
    """One PCI function as sysfs shows it now."""

    bdf: str
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int
    subsystem_device_id: int
    class_code: int  # 24 bits: base, sub, prog-if
    driver: str | None
    driver_override: str | None
    iommu_group: int | None
    numa_node: int | None
    pcie_root: str
    modalias: str
    sriov_totalvfs: int
    sriov_numvfs: int
    is_virtfn: bool
    vfio_cdev: str | None  # "vfioN" when the device is on a vfio driver with iommufd cdev support
    reset_method: str

    @property
    def class16(self) -> int:
        """Base class and subclass (e.g. 0x0302 for a 3D controller)."""
        return self.class_code >> 8

    @property
    def is_bridge(self) -> bool:
        """PCI-to-PCI bridges and PCIe ports: they stay on the host (vfio-pci refuses them)."""
        return self.class16 == CLASS_PCI_BRIDGE

    @property
    def ids(self) -> str:
        return f"{self.vendor_id:04x}:{self.device_id:04x}"


def _hex(io: HostIO, path: Path) -> int:
    text = io.read_text(path).strip()
    try:
        return int(text, 16)
    except ValueError as e:
        raise DeviceUnreadableError(f"{path} holds {text[:32]!r}, not a hex number") from e


def _opt_int(io: HostIO, path: Path, default: int) -> int:
    try:
        return int(io.read_text(path).strip(), 0)
    except (OSError, ValueError):
        return default


def _opt_text(io: HostIO, path: Path) -> str:
    try:
        return io.read_text(path).strip()
    except OSError:
        return ""


def device_dir(roots: HostRoots, bdf: str) -> Path:
    return roots.pci_devices / bdf


def read_driver(io: HostIO, roots: HostRoots, bdf: str) -> str | None:
    """The driver the device is bound to now, or None."""
    link = device_dir(roots, bdf) / "driver"
    try:
        return io.readlink(link).rstrip("/").rsplit("/", 1)[-1]
    except FileNotFoundError:
        if not io.exists(device_dir(roots, bdf)):
            raise DeviceVanishedError(f"PCI device {bdf} has disappeared from {roots.pci_devices}") from None
        return None
    except OSError as e:  # EINVAL: not a symlink
        raise DeviceUnreadableError(f"{link} is not a driver link ({e.strerror})") from e


def read_iommu_group(io: HostIO, roots: HostRoots, bdf: str) -> int | None:
    try:
        return int(io.readlink(device_dir(roots, bdf) / "iommu_group").rstrip("/").rsplit("/", 1)[-1])
    except (OSError, ValueError):  # missing, or not a link (EINVAL): no group we could hand out
        return None


def read_vfio_cdev(io: HostIO, roots: HostRoots, bdf: str) -> str | None:
    try:
        names = [n for n in io.listdir(device_dir(roots, bdf) / "vfio-dev") if n.startswith("vfio")]
    except OSError:
        return None
    return names[0] if names else None


def _pcie_root(io: HostIO, roots: HostRoots, bdf: str) -> str:
    """The host bridge and root port above the device, from its canonical sysfs path (pci0000:00/0000:00:01.0/...)."""
    real = io.realpath(device_dir(roots, bdf))
    parts = real.parts
    for i, part in enumerate(parts):
        if part.startswith("pci") and ":" in part:
            return "/".join(parts[i : i + 2]) if i + 2 < len(parts) else part
    return ""


def read_function(io: HostIO, roots: HostRoots, bdf: str) -> PciFunction:
    """Everything the host layer needs to know about one PCI function."""
    d = device_dir(roots, bdf)
    try:
        vendor = _hex(io, d / "vendor")
        device = _hex(io, d / "device")
        class_code = _hex(io, d / "class")
    except (FileNotFoundError, NotADirectoryError) as e:
        raise DeviceVanishedError(f"PCI device {bdf} has disappeared from {roots.pci_devices}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DeviceUnreadableError(f"PCI device {bdf}: identity attributes unreadable ({e})") from e
    override = _opt_text(io, d / "driver_override")
    numa = _opt_int(io, d / "numa_node", -1)
    return PciFunction(
        bdf=bdf,
        vendor_id=vendor,
        device_id=device,
        subsystem_vendor_id=_opt_int(io, d / "subsystem_vendor", 0),
        subsystem_device_id=_opt_int(io, d / "subsystem_device", 0),
        class_code=class_code,
        driver=read_driver(io, roots, bdf),
        driver_override=None if override in ("", "(null)") else override,
        iommu_group=read_iommu_group(io, roots, bdf),
        numa_node=None if numa < 0 else numa,
        pcie_root=_pcie_root(io, roots, bdf),
        modalias=_opt_text(io, d / "modalias"),
        sriov_totalvfs=_opt_int(io, d / "sriov_totalvfs", 0),
        sriov_numvfs=_opt_int(io, d / "sriov_numvfs", 0),
        is_virtfn=io.exists(d / "physfn"),
        vfio_cdev=read_vfio_cdev(io, roots, bdf),
        reset_method=_opt_text(io, d / "reset_method"),
    )


def list_functions(io: HostIO, roots: HostRoots) -> list[str]:
    try:
        return io.listdir(roots.pci_devices)
    except FileNotFoundError:
        return []


def group_members(io: HostIO, roots: HostRoots, group: int) -> list[str]:
    """The PCI addresses in IOMMU group `group`."""
    return io.listdir(roots.iommu_groups / str(group) / "devices")


def iommu_enabled(io: HostIO, roots: HostRoots) -> bool:
    try:
        return bool(io.listdir(roots.iommu_groups))
    except OSError:
        return False
