"""Cases on the minimal 6.12 kernel with IOMMUFD and the VFIO device cdev (Debian's own kernels have both off).

The binder, told to prefer iommufd, must hand out `/dev/vfio/devices/vfioN` with `/dev/iommu`; the kernel must
then accept the cdev flow (BIND_IOMMUFD, IOAS_ALLOC, ATTACH_IOMMUFD_PT) and refuse the legacy group while the cdev
is open.
"""

from __future__ import annotations

import errno
import os
import stat

import kstate
import project
import vfio_uapi as vfio
from harness import case, expect, expect_errno


@case("iommufd_device_nodes", "iommufd")
def nodes(topo: kstate.Topology) -> str:
    expect(os.path.exists("/dev/iommu"), "/dev/iommu does not exist: the kernel has no IOMMUFD")
    expect(stat.S_ISCHR(os.stat("/dev/iommu").st_mode), "/dev/iommu is not a character device")
    expect(os.path.isdir("/dev/vfio"), "/dev/vfio does not exist")
    return "/dev/iommu present"


@case("bind_prefers_iommufd_cdev", "iommufd")
def bind_cdev(topo: kstate.Topology) -> str:
    g = topo.solo_group
    before = kstate.snapshot(kstate.members(g))
    binder = project.binder(backend="prefer-iommufd")
    bound = binder.bind(g, project.OWNER)
    try:
        expect(kstate.driver(topo.solo_edu) == "vfio-pci", f"driver is {kstate.driver(topo.solo_edu)!r}")
        cdev = kstate.vfio_cdev(topo.solo_edu)
        expect(cdev is not None, f"{topo.solo_edu} has no vfio-dev/ entry in sysfs")
        assert cdev is not None
        node = f"/dev/vfio/devices/{cdev}"
        expect(os.path.exists(node), f"{node} does not exist")
        expect(bound.backend == "iommufd", f"the binder chose {bound.backend!r} although iommufd is preferred")
        expect(bound.device_nodes == (node,), f"the binder handed out {bound.device_nodes}, the kernel made {node}")
        expect("/dev/iommu" in bound.control_nodes, f"control nodes {bound.control_nodes} lack /dev/iommu")
        with vfio.cdev_session("/dev", cdev) as check:
            # The kernel answers with the IOAS itself or with the hardware page table it created for it on attach.
            expect(check.attached_pt > 0 and check.ioas > 0, f"IOAS {check.ioas}, attached to {check.attached_pt}")
            expect_errno(errno.EBUSY, "opening the legacy group while the cdev is bound",
                         lambda: vfio.open_close(f"/dev/vfio/{g}"))
        vfio.open_close(f"/dev/vfio/{g}")  # the cdev is closed: the group opens again
    finally:
        binder.restore(g, project.OWNER)
    for bdf, state in before.items():
        expect(kstate.driver(bdf) == state.driver, f"{bdf} back on {kstate.driver(bdf)!r}, was {state.driver!r}")
    expect(kstate.vfio_cdev(topo.solo_edu) is None, "the vfio cdev survived the restore")
    return (f"{node}: devid {check.devid}, IOAS {check.ioas} attached (page table {check.attached_pt}), "
            f"{check.device.num_regions} regions; "
            "legacy group EBUSY while bound")


IOMMUFD_CYCLES = 5


@case("iommufd_cycles_over_all_groups", "iommufd")
def iommufd_cycles(topo: kstate.Topology) -> str:
    """Every group, several times, through the cdev backend: one node per bound device, none left after restore."""
    before = kstate.snapshot(topo.all_members())
    binder = project.binder(project.FOREIGN_RNG, project.DISPLAY_AUDIO, backend="prefer-iommufd")
    for n in range(IOMMUFD_CYCLES):
        for g in topo.all_groups():
            endpoints = [b for b in kstate.members(g) if not kstate.is_bridge(b)]
            bound = binder.bind(g, project.OWNER)
            try:
                cdevs = {b: kstate.vfio_cdev(b) for b in endpoints}
                expect(all(cdevs.values()), f"cycle {n + 1}, group {g}: devices without a vfio cdev: {cdevs}")
                nodes = tuple(sorted(f"/dev/vfio/devices/{c}" for c in cdevs.values()))
                expect(tuple(sorted(bound.device_nodes)) == nodes,
                       f"cycle {n + 1}, group {g}: the binder handed out {bound.device_nodes}, the kernel made {nodes}")
                expect(all(os.path.exists(node) for node in nodes), f"cycle {n + 1}: missing nodes among {nodes}")
            finally:
                binder.restore(g, project.OWNER)
            leftovers = [b for b in endpoints if kstate.vfio_cdev(b) is not None]
            expect(not leftovers, f"cycle {n + 1}, group {g}: vfio cdevs survived the restore on {leftovers}")
    for bdf, state in before.items():
        expect(kstate.snapshot([bdf])[bdf] == state, f"{bdf} not back as it booted ({state})")
    return f"{IOMMUFD_CYCLES} cdev bind/restore cycles over groups {topo.all_groups()}"
