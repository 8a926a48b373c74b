"""GPU and IOMMU-group discovery from sysfs.

sysfs, not NVML: NVML cannot see a GPU on vfio-pci, so a GPU left passed-through across a restart would vanish from an
NVML inventory. Each GPU is reported with its whole IOMMU group, because a legacy group goes to a VM whole.

Several GPUs in one IOMMU group (a PCIe switch without ACS) are **one allocatable unit**: `Inventory.units` has one
entry per group, named after its first GPU, listing every GPU it carries. The plugin publishes units, so two claims
can never get two GPUs of one group. Which devices count as GPUs is the injectable `DeviceFilter` (NVIDIA 3D/VGA by
default), so the same code can be pointed at emulated devices in a VM test.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cc_gpu.host import pciids
from cc_gpu.host.ccmode import read_cc_mode
from cc_gpu.host.errors import DeviceUnreadableError, DeviceVanishedError, NoIommuError
from cc_gpu.host.host import Host
from cc_gpu.host.pci import PciFunction, group_members, iommu_enabled, list_functions, read_function

CLASS_VGA = 0x0300
CLASS_3D = 0x0302


@dataclass(frozen=True)
class DeviceFilter:
    """Which PCI functions are GPUs: vendor IDs and 16-bit class codes (base + subclass)."""

    vendors: frozenset[int] = frozenset({pciids.NVIDIA})
    classes: frozenset[int] = frozenset({CLASS_VGA, CLASS_3D})

    def matches(self, fn: PciFunction) -> bool:
        return fn.vendor_id in self.vendors and fn.class16 in self.classes and not fn.is_virtfn

    @classmethod
    def parse(cls, vendors: Iterable[str], classes: Iterable[str]) -> DeviceFilter:
        """From strings like `0x1234` / `1234` and `0x00ff` / `0300`."""
        return cls(frozenset(int(v, 16) for v in vendors), frozenset(int(c, 16) for c in classes))


NVIDIA_GPUS = DeviceFilter()


@dataclass(frozen=True)
class GroupMember:
    bdf: str
    vendor_id: int
    device_id: int
    class_code: int
    driver: str | None
    is_bridge: bool


@dataclass(frozen=True)
class IommuGroup:
    number: int
    members: tuple[GroupMember, ...]
    gpus: tuple[str, ...]  # BDFs of the GPUs (per the filter) in this group


@dataclass(frozen=True)
class Gpu:
    bdf: str
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int
    subsystem_device_id: int
    product_name: str
    architecture: str
    numa_node: int | None
    pcie_root: str
    iommu_group: int | None
    group_members: tuple[GroupMember, ...]
    driver: str | None
    iommufd_cdev: str | None
    sriov_totalvfs: int
    sriov_numvfs: int
    is_vga: bool
    cc_mode: str
    uuid: str | None = None
    memory_bytes: int | None = None
    vbios_version: str | None = None
    driver_version: str | None = None
    shares_group_with: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Unit:
    """One allocatable unit: an IOMMU group with one or more GPUs."""

    name: str  # the first GPU's BDF
    iommu_group: int
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...]
    groups: tuple[IommuGroup, ...]
    iommufd: bool  # /dev/iommu exists and VFIO device cdevs are not known to be missing (`iommufd_available`)

    @property
    def units(self) -> tuple[Unit, ...]:
        return tuple(Unit(g.gpus[0], g.number, g.gpus) for g in self.groups if g.gpus)

    def gpu(self, bdf: str) -> Gpu | None:
        return next((g for g in self.gpus if g.bdf == bdf), None)

    def group(self, number: int) -> IommuGroup | None:
        return next((g for g in self.groups if g.number == number), None)


def _member(fn: PciFunction) -> GroupMember:
    return GroupMember(fn.bdf, fn.vendor_id, fn.device_id, fn.class_code, fn.driver, fn.is_bridge)


def read_group(host: Host, number: int, device_filter: DeviceFilter = NVIDIA_GPUS) -> IommuGroup:
    fns = [read_function(host.io, host.roots, bdf) for bdf in group_members(host.io, host.roots, number)]
    return IommuGroup(number, tuple(_member(f) for f in fns), tuple(f.bdf for f in fns if device_filter.matches(f)))


def discover(host: Host, device_filter: DeviceFilter = NVIDIA_GPUS, *, require_iommu: bool = True) -> Inventory:
    """Every GPU the filter selects, with its IOMMU group; `NoIommuError` when the IOMMU is off."""
    io, roots = host.io, host.roots
    if require_iommu and not iommu_enabled(io, roots):
        raise NoIommuError(
            f"no IOMMU groups under {roots.iommu_groups}: the IOMMU is off, so no GPU can be passed through. "
            "Enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on."
        )
    gpus_fn: list[PciFunction] = []
    for bdf in list_functions(io, roots):
        try:
            fn = read_function(io, roots, bdf)
        except (DeviceVanishedError, DeviceUnreadableError):
            continue  # gone between listing and reading, or not readable: not part of this inventory
        if device_filter.matches(fn):
            gpus_fn.append(fn)
    groups: dict[int, IommuGroup] = {}
    unreadable: set[int] = set()
    for fn in gpus_fn:
        if fn.iommu_group is not None and fn.iommu_group not in groups and fn.iommu_group not in unreadable:
            try:
                groups[fn.iommu_group] = read_group(host, fn.iommu_group, device_filter)
            except (DeviceVanishedError, DeviceUnreadableError, NotADirectoryError, FileNotFoundError):
                unreadable.add(fn.iommu_group)  # a group that cannot be read whole cannot be handed out whole
    gpus_fn = [fn for fn in gpus_fn if fn.iommu_group not in unreadable]
    with host.nvml.batch():  # one NVML session for the whole pass, closed before anything can bind
        gpus = tuple(_gpu(host, fn, groups.get(fn.iommu_group) if fn.iommu_group is not None else None)
                     for fn in gpus_fn)
    return Inventory(gpus, tuple(groups[n] for n in sorted(groups)), iommufd_available(host))


def iommufd_available(host: Host) -> bool:
    """Whether devices can be passed as iommufd cdevs: `/dev/iommu` (CONFIG_IOMMUFD) and VFIO device cdevs.

    The cdevs (CONFIG_VFIO_DEVICE_CDEV) have no node of their own before a device is bound, but with the cdev support
    the vfio module registers the `vfio-dev` character major, which `/proc/devices` lists. When vfio is loaded and that
    major is missing, the kernel has iommufd but no VFIO cdevs; when vfio is not loaded yet, it cannot be told and
    the bind itself says so (it waits for the cdev to appear).
    """
    io, roots = host.io, host.roots
    if not io.exists(roots.dev / "iommu"):
        return False
    if not io.exists(roots.sysfs / "module" / "vfio"):
        return True
    try:
        devices = io.read_text(roots.proc / "devices")
    except OSError:
        return True
    return any(line.split()[-1:] == ["vfio-dev"] for line in devices.splitlines())


def _gpu(host: Host, fn: PciFunction, group: IommuGroup | None) -> Gpu:
    product = pciids.lookup(fn.vendor_id, fn.device_id)
    nv = host.nvml.device_info(fn.bdf) if fn.driver == "nvidia" else None
    return Gpu(
        bdf=fn.bdf,
        vendor_id=fn.vendor_id,
        device_id=fn.device_id,
        subsystem_vendor_id=fn.subsystem_vendor_id,
        subsystem_device_id=fn.subsystem_device_id,
        product_name=product.name,
        architecture=product.architecture,
        numa_node=fn.numa_node,
        pcie_root=fn.pcie_root,
        iommu_group=fn.iommu_group,
        group_members=group.members if group else (),
        driver=fn.driver,
        iommufd_cdev=fn.vfio_cdev,
        sriov_totalvfs=fn.sriov_totalvfs,
        sriov_numvfs=fn.sriov_numvfs,
        is_vga=fn.class16 == CLASS_VGA,
        cc_mode=read_cc_mode(host.io, host.roots, fn.bdf, architecture=product.architecture, driver=fn.driver, nvml=nv),
        uuid=nv.uuid if nv else None,
        memory_bytes=nv.memory_bytes if nv else None,
        vbios_version=nv.vbios_version if nv else None,
        driver_version=nv.driver_version if nv else None,
        shares_group_with=tuple(b for b in group.gpus if b != fn.bdf) if group else (),
    )
