"""Cases on Debian's own kernel (legacy VFIO groups and containers): the binder against the real vfio-pci.

Each case asserts the kernel's answer: driver links and driver_override in sysfs, `/dev/vfio/<group>`, and the
container flow a VMM runs (group viable, SET_CONTAINER, SET_IOMMU type1v2, GET_DEVICE_FD).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import kstate
import project
import vfio_uapi as vfio
from harness import case, expect, expect_errno

from cc_gpu.host.discovery import discover
from cc_gpu.host.errors import ForeignDeviceError

BOTH = ("legacy", "iommufd")
CYCLES = 20


def _members(group: int) -> list[str]:
    return kstate.members(group)


def _expect_on_vfio(group: int, bdfs: list[str]) -> None:
    for bdf in bdfs:
        expect(kstate.driver(bdf) == "vfio-pci", f"{bdf}: the kernel says driver {kstate.driver(bdf)!r}, not vfio-pci")
    expect(os.path.exists(f"/dev/vfio/{group}"), f"/dev/vfio/{group} does not exist after bind")


def _expect_as_before(before: dict[str, kstate.DeviceState], what: str) -> None:
    after = kstate.snapshot(list(before))
    changed = {b: s for b, s in after.items() if s != before[b]}
    expect(not changed, f"{what}: {kstate.describe(changed)} (was: {kstate.describe({b: before[b] for b in changed})})")


def _expect_restored(before: dict[str, kstate.DeviceState]) -> None:
    for bdf, state in before.items():
        expect(kstate.driver(bdf) == state.driver,
               f"{bdf}: back on {kstate.driver(bdf)!r}, it had {state.driver!r} before")
        expect(kstate.driver_override(bdf) == state.override,
               f"{bdf}: driver_override reads {kstate.driver_override(bdf)!r} after restore, was {state.override!r}")


@case("discovery_sees_the_kernel_groups", *BOTH)
def discovery(topo: kstate.Topology) -> str:
    inventory = discover(project.host(), project.EMULATED_GPUS)
    found = {g.bdf: g for g in inventory.gpus}
    for bdf in (topo.solo_edu, topo.shared_edu, topo.display):
        expect(bdf in found, f"discovery missed {bdf}; it found {sorted(found)}")
    for bdf in (topo.solo_edu, topo.shared_edu, topo.display):
        gpu = found[bdf]
        expect(gpu.iommu_group == kstate.group_of(bdf), f"{bdf}: discovery says group {gpu.iommu_group}, "
               f"the kernel {kstate.group_of(bdf)}")
    for g in (topo.solo_group, topo.shared_group, topo.display_group):
        group = inventory.group(g)
        expect(group is not None, f"discovery has no IOMMU group {g}")
        assert group is not None
        ours = sorted(m.bdf for m in group.members)
        expect(ours == _members(g), f"group {g}: discovery lists {ours}, the kernel {_members(g)}")
    expect(inventory.iommufd == os.path.exists("/dev/iommu"),
           f"discovery says iommufd={inventory.iommufd}, /dev/iommu exists: {os.path.exists('/dev/iommu')}")
    return f"{len(found)} emulated GPUs in groups {topo.all_groups()}, iommufd={inventory.iommufd}"


@case("bind_solo_group", *BOTH)
def bind_solo(topo: kstate.Topology) -> str:
    binder = project.binder()
    g = topo.solo_group
    before = kstate.snapshot(_members(g))
    bound = binder.bind(g, project.OWNER)
    try:
        _expect_on_vfio(g, [topo.solo_edu])
        expect(bound.backend == "legacy" and bound.device_nodes == (f"/dev/vfio/{g}",),
               f"binder handed out {bound.backend} {bound.device_nodes}")
        check = vfio.container_flow("/dev", g, topo.solo_edu)
        expect(check.api_version == vfio.VFIO_API_VERSION, f"VFIO API version {check.api_version}")
        expect(check.type1v2, "container does not offer VFIO_TYPE1v2_IOMMU")
        expect(check.viable, "VFIO_GROUP_GET_STATUS: group not viable")
        expect(check.device.num_regions == 9 and check.device.num_irqs == 5,
               f"edu through VFIO: {check.device.num_regions} regions, {check.device.num_irqs} irqs (expected 9, 5)")
        with vfio.opened(f"/dev/vfio/{g}"):
            expect_errno(errno.EBUSY, "second open of the group", lambda: vfio.open_close(f"/dev/vfio/{g}"))
    finally:
        binder.restore(g, project.OWNER)
    _expect_restored(before)
    return (f"group {g}: vfio-pci, container flow ok ({check.device.num_regions} regions, "
            f"{check.device.num_irqs} irqs), second open EBUSY")


@case("shared_group_refused_by_default", "legacy")
def shared_refused(topo: kstate.Topology) -> str:
    g = topo.shared_group
    before = kstate.snapshot(_members(g))
    try:
        project.binder().bind(g, project.OWNER)
    except ForeignDeviceError as e:
        _expect_as_before(before, "a refused bind changed the group")
        status = project.binder().status(g)
        expect(status.owner is None and status.phase is None, f"a refused bind left a record: {status.phase}")
        return f"refused: {e}"
    project.binder().restore(g, project.OWNER)
    raise AssertionError(f"group {g} holds the foreign {topo.foreign} but the binder bound it")


@case("shared_group_bound_when_foreign_allowed", "legacy")
def shared_allowed(topo: kstate.Topology) -> str:
    g = topo.shared_group
    binder = project.binder(project.FOREIGN_RNG)
    before = kstate.snapshot(_members(g))
    binder.bind(g, project.OWNER)
    try:
        endpoints = [b for b in _members(g) if not kstate.is_bridge(b)]
        _expect_on_vfio(g, endpoints)
        for bridge in (b for b in _members(g) if kstate.is_bridge(b)):
            expect(kstate.driver(bridge) == before[bridge].driver, f"bridge {bridge} was moved")
        answers = []
        for bdf in endpoints:
            check = vfio.container_flow("/dev", g, bdf)
            expect(check.viable, f"group {g} not viable with everything on vfio-pci")
            answers.append(f"{bdf}: {check.device.num_regions} regions")
        expect(binder.status(g).viable, "the binder calls the bound group not viable")
    finally:
        binder.restore(g, project.OWNER)
    _expect_restored(before)
    return f"group {g} viable: " + "; ".join(answers)


@case("group_not_viable_is_detected", "legacy")
def not_viable(topo: kstate.Topology) -> str:
    g = topo.shared_group
    before = kstate.snapshot(_members(g))
    kstate.bind_by_hand(topo.shared_edu)  # the foreign virtio-rng stays on virtio-pci
    try:
        with vfio.opened(f"/dev/vfio/{g}") as group_fd, vfio.opened("/dev/vfio/vfio") as container:
            flags = vfio.group_status(group_fd)
            expect(not flags & vfio.VFIO_GROUP_FLAGS_VIABLE, f"kernel reports group {g} viable (flags {flags:#x})")
            expect_errno(errno.EPERM, "VFIO_GROUP_SET_CONTAINER on a non-viable group",
                         lambda: vfio.set_container(group_fd, container))
            expect_errno(errno.EINVAL, "VFIO_GROUP_GET_DEVICE_FD on a non-viable group",
                         lambda: vfio.group_device_fd(group_fd, topo.shared_edu))
        binder = project.binder()
        status = binder.status(g)
        expect(not status.viable, f"the binder reports group {g} viable while {topo.foreign} is on virtio-pci")
        try:
            handed = binder.bind(g, project.OWNER)
        except ForeignDeviceError:
            pass
        else:
            binder.restore(g, project.OWNER)
            raise AssertionError(f"the binder handed out the non-viable group {g}: {handed.device_nodes}")
        expect(kstate.driver(topo.foreign) == "virtio-pci", "the refused bind moved the foreign device")
    finally:
        kstate.put_back_by_hand(topo.shared_edu, before[topo.shared_edu])
    _expect_restored(before)
    return f"kernel: flags {flags:#x}, SET_CONTAINER EPERM, GET_DEVICE_FD EINVAL; binder: not viable, refused"


def _bind_restore_all(topo: kstate.Topology) -> None:
    binder = project.binder(project.FOREIGN_RNG, project.DISPLAY_AUDIO)
    for g in topo.all_groups():
        before = kstate.snapshot(_members(g))
        binder.bind(g, project.OWNER)
        try:
            _expect_on_vfio(g, [b for b in _members(g) if not kstate.is_bridge(b)])
            with vfio.opened(f"/dev/vfio/{g}") as group_fd:
                expect(bool(vfio.group_status(group_fd) & vfio.VFIO_GROUP_FLAGS_VIABLE), f"group {g} not viable")
        finally:
            binder.restore(g, project.OWNER)
        _expect_restored(before)


@case("restore_returns_every_device", *BOTH)
def restore_exact(topo: kstate.Topology) -> str:
    before = kstate.snapshot(topo.all_members())
    expect(before[topo.foreign].driver == "virtio-pci", f"{topo.foreign} did not boot on virtio-pci")
    _bind_restore_all(topo)
    _expect_restored(before)
    rngs = kstate.hw_rngs()
    expect(any(r.startswith("virtio_rng") for r in rngs), f"virtio-rng is back on virtio-pci but no hwrng: {rngs}")
    return f"all groups restored; {topo.foreign} on virtio-pci again, hwrng {rngs}"


@case("repeated_cycles", "legacy")
def cycles(topo: kstate.Topology) -> str:
    before = kstate.snapshot(topo.all_members())
    started = time.monotonic()
    for n in range(CYCLES):
        try:
            _bind_restore_all(topo)
        except AssertionError as e:
            raise AssertionError(f"cycle {n + 1}/{CYCLES}: {e}") from e
        leftover = [b for b in before if kstate.driver_override(b) != before[b].override]
        expect(not leftover, f"cycle {n + 1}: driver_override left on {leftover}")
    _expect_restored(before)
    per_pair = (time.monotonic() - started) / (CYCLES * len(topo.all_groups()))
    return (f"{CYCLES} bind/restore cycles over groups {topo.all_groups()}, "
            f"{per_pair * 1000:.0f} ms per group bind + check + restore under TCG")


def _cli_recover(*groups: int) -> list[int]:
    """Recovery as an admin or a restarted plugin runs it: `cc-gpu vfio recover`, a separate process."""
    done = subprocess.run(
        [sys.executable, "-m", "cc_gpu", "vfio", "recover", *map(str, groups), "--state-dir", project.STATE_DIR,
         "--no-nvml", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    expect(done.returncode == 0, f"cc-gpu vfio recover: exit {done.returncode}: {done.stderr}{done.stdout}")
    return list(json.loads(done.stdout)["recovered"])


@case("killed_mid_bind_recovers", "legacy")
def killed_mid_bind(topo: kstate.Topology) -> str:
    g = topo.shared_group
    before = kstate.snapshot(_members(g))
    child = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "interrupted_bind.py"), str(g), topo.foreign],
        capture_output=True, text=True, timeout=120, check=False,
    )
    expect(child.returncode == -signal.SIGKILL,
           f"the binder was not killed mid-bind (exit {child.returncode}): {child.stdout}{child.stderr}")
    binder = project.binder(project.FOREIGN_RNG)
    torn = kstate.snapshot(_members(g))
    status = binder.status(g)
    expect(status.phase == "binding", f"after the kill the record says {status.phase!r}, not 'binding'")
    expect(torn[topo.foreign].driver is None,
           f"killed after unbinding {topo.foreign}, yet the kernel has it on {torn[topo.foreign].driver!r}")
    expect(g in binder.interrupted(), f"recovery does not list group {g} as interrupted")
    recovered = _cli_recover()
    expect(recovered == [g], f"`cc-gpu vfio recover` recovered {recovered}, expected [{g}]")
    _expect_restored(before)
    after = binder.status(g)
    expect(after.phase is None and after.owner is None, f"after recovery the record says {after.phase!r}")
    # The recorded state is consistent: a fresh bind and restore work on the recovered group.
    binder.bind(g, project.OWNER)
    _expect_on_vfio(g, [b for b in _members(g) if not kstate.is_bridge(b)])
    expect(_cli_recover(g) == [], "recover touched a bound group (a restart must leave prepared groups alone)")
    _expect_on_vfio(g, [b for b in _members(g) if not kstate.is_bridge(b)])
    binder.restore(g, project.OWNER)
    _expect_restored(before)
    return (f"killed with {kstate.describe({topo.foreign: torn[topo.foreign]})}; recovered to "
            f"{kstate.describe(before)}")


@case("restore_refuses_while_a_vmm_holds_the_group", "legacy")
def restore_in_use(topo: kstate.Topology) -> str:
    """Linux's vfio-pci unbind waits, uninterruptibly, until userspace closes the device: a restore that writes
    `unbind` while a VMM still holds the group would hang the plugin. The binder must notice and refuse instead."""
    g = topo.solo_group
    before = kstate.snapshot(kstate.members(g))
    binder = project.binder()
    binder.bind(g, project.OWNER)
    child: subprocess.Popen[str] | None = None
    answer: int | None = None
    output = ""
    try:
        with vfio.opened("/dev/vfio/vfio") as container, vfio.opened(f"/dev/vfio/{g}") as group_fd:
            vfio.set_container(group_fd, container)
            vfio.set_iommu(container)
            device_fd = vfio.group_device_fd(group_fd, topo.solo_edu)  # what a VMM holds while the VM runs
            try:
                child = subprocess.Popen(
                    [sys.executable, os.path.join(os.path.dirname(__file__), "restore_child.py"), str(g)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                )
                try:
                    answer = child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    answer = None
                driver_while_held = kstate.driver(topo.solo_edu)
            finally:
                os.close(device_fd)
        if child is not None:
            child.wait(timeout=60)  # the device is released: a blocked unbind completes now
            output = child.stdout.read() if child.stdout else ""
        expect(answer is not None,
               "restore blocked in the kernel while a process held the group open (vfio-pci's unbind waits for "
               "userspace to release the device); the binder must refuse instead of writing unbind")
        expect(answer == 1, f"restore while the group is held: exit {answer}, expected a typed refusal: {output}")
        expect(driver_while_held == "vfio-pci", f"the device left vfio-pci while held: {driver_while_held!r}")
    finally:
        binder.restore(g, project.OWNER)
    _expect_restored(before)
    return f"refused while held: {output.strip()}"
