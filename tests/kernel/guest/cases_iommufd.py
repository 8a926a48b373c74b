"""Cases on the minimal 6.12 kernel with IOMMUFD and the VFIO device cdev (Debian's own kernels have both off).

The binder, told to prefer iommufd, must hand out `/dev/vfio/devices/vfioN` with `/dev/iommu`; the kernel must
then accept the cdev flow (BIND_IOMMUFD, IOAS_ALLOC, ATTACH_IOMMUFD_PT) and refuse the legacy group while the cdev
is open.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import kstate
import project
import vfio_uapi as vfio
from harness import case, expect, expect_errno

from cc_gpu.dra import cdi
from cc_gpu.dra.hostport import HostAdapter, views_from
from cc_gpu.dra.iommu import choose_mode
from cc_gpu.dra.settings import Selection
from cc_gpu.host.binder import BindPolicy
from cc_gpu.host.discovery import discover


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


@case("confidential_claim_gets_an_iommufd_cdev_spec", "iommufd")
def confidential_cdev_spec(topo: kstate.Topology) -> str:
    """The plugin's path for a claim of a confidential pod: the node's capability as published, the mode the plugin
    picks (`auto` -> iommufd), the bind through the plugin's host adapter, the CDI spec it writes; then the cdev the
    spec names is opened, bound to iommufd and attached to an IOAS, as QEMU does for Kata."""
    g = topo.solo_group
    before = kstate.snapshot(kstate.members(g))
    host = project.host()
    (view,) = [v for v in views_from(discover(host, project.EMULATED_GPUS), Selection()) if v.iommu_group == g]
    expect(view.iommufd, "the node's devices are not published with iommuFD=true although /dev/iommu exists")
    mode = choose_mode("auto", confidential=True, node_iommufd=view.iommufd, kata_version=None, device=view.name)
    expect(mode == "iommufd", f"a confidential claim got iommu mode {mode!r}")
    adapter = HostAdapter(host, Selection(), bind_policy=BindPolicy(passthrough=project.EMULATED_GPUS,
                                                                    bind_timeout=30.0, lock_timeout=30.0))
    bound = adapter.bind(g, project.OWNER, mode)
    try:
        expect(bound.mode == "iommufd", f"the host adapter bound the group as {bound.mode!r}")
        with tempfile.TemporaryDirectory() as tmp:
            path = cdi.CdiWriter(Path(tmp)).write_claim(
                project.OWNER, [cdi.CdiDevice(cdi.device_name(project.OWNER, view.name), bound.nodes)])
            spec = json.loads(path.read_text())
        nodes = [n["path"] for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"]]
        expect(bool(nodes) and all(n.startswith("/dev/vfio/devices/vfio") for n in nodes),
               f"the spec names {nodes}, not iommufd cdevs only")
        details = []
        for node in nodes:
            expect(stat.S_ISCHR(os.stat(node).st_mode), f"{node} is not a character device")
            with vfio.cdev_session("/dev", node.rsplit("/", 1)[1]) as check:
                expect(check.attached_pt > 0 and check.ioas > 0, f"{node}: IOAS {check.ioas}, pt {check.attached_pt}")
                details.append(f"{node}: devid {check.devid}, IOAS {check.ioas} attached (pt {check.attached_pt})")
    finally:
        adapter.restore(g, project.OWNER, reset=False)
    for bdf, state in before.items():
        expect(kstate.driver(bdf) == state.driver, f"{bdf} back on {kstate.driver(bdf)!r}, was {state.driver!r}")
    return f"spec cdiVersion {spec['cdiVersion']} names {nodes}; " + "; ".join(details)
