"""The group-aware vfio binder: move a GPU's whole IOMMU group to vfio and put every device back exactly as it was.

A legacy VFIO group is usable only when every device in it is on a vfio driver (or on none, or on a driver that leaves
DMA to vfio: pci-stub, pcieport). So `bind` moves the GPU *and* its companions (the HD-audio function), leaves bridges
and PCIe ports where they are (vfio-pci refuses bridges), and refuses when the group holds a device policy does not
let leave the host, when SR-IOV VFs exist, or when a process still holds the GPU.

Sequence per device: record the original driver and driver_override (persisted before the first sysfs write), unbind,
set driver_override, bind, then *wait for the result* (driver link, then `/dev/vfio/<group>` or the iommufd cdev),
woken by kernel uevents with a polling fallback, always bounded. Any failure rolls back what was done. `restore`
reverses it from the record, from any process. One group is touched by one operation at a time (a lock file per
group); different groups bind in parallel.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cc_gpu.crashpoints import crashpoint
from cc_gpu.host import pci
from cc_gpu.host.ccmode import is_vfio_driver
from cc_gpu.host.errors import (
    BackendUnavailableError,
    BindFailedError,
    BindTimeoutError,
    DeviceVanishedError,
    ForeignDeviceError,
    GpuInUseError,
    GroupInUseError,
    GroupNotFoundError,
    GroupNotViableError,
    GroupOwnedError,
    NoIommuError,
    ResetUnsupportedError,
    RestoreFailedError,
    SriovActiveError,
)
from cc_gpu.host.fsio import HostIO
from cc_gpu.host.host import Host
from cc_gpu.host.inuse import gpu_holders, holders
from cc_gpu.host.modalias import choose_vfio_module, driver_name_for_module, load_aliases
from cc_gpu.host.policy import (
    HOST_SAFE_DRIVERS,
    NVIDIA_PASSTHROUGH,
    BindPolicy,
    BoundDevice,
    BoundGroup,
    GroupStatus,
    MemberStatus,
)
from cc_gpu.host.records import DeviceRecord, GroupRecord, RecordStore
from cc_gpu.host.roots import HostRoots
from cc_gpu.host.uevents import UeventSubscription

log = logging.getLogger(__name__)

__all__ = ["NVIDIA_PASSTHROUGH", "BindPolicy", "Binder", "BoundDevice", "BoundGroup", "GroupStatus", "MemberStatus"]

@dataclass(frozen=True)
class _Move:
    fn: pci.PciFunction
    target: str


class Binder:
    """Binds and restores IOMMU groups on one host. Thread-safe and process-safe per group."""

    def __init__(self, host: Host, policy: BindPolicy | None = None) -> None:
        self.host = host
        self.policy = policy or BindPolicy()
        self.records = RecordStore(host.roots.state)

    # ---- queries -------------------------------------------------------------------------------------------------
    def group_of(self, bdf: str) -> int:
        group = pci.read_iommu_group(self.host.io, self.host.roots, bdf)
        if group is None:
            if not self.host.io.exists(pci.device_dir(self.host.roots, bdf)):
                raise DeviceVanishedError(f"no PCI device {bdf} on this host")
            raise GroupNotFoundError(f"PCI device {bdf} has no IOMMU group: the IOMMU is off or does not cover it")
        return group

    def _members(self, group: int) -> list[pci.PciFunction]:
        io, roots = self.host.io, self.host.roots
        try:
            bdfs = pci.group_members(io, roots, group)
        except FileNotFoundError:
            if not pci.iommu_enabled(io, roots):
                raise NoIommuError(f"no IOMMU groups under {roots.iommu_groups}: the IOMMU is off") from None
            raise GroupNotFoundError(f"IOMMU group {group} does not exist on this host") from None
        return [pci.read_function(io, roots, b) for b in bdfs]

    def status(self, group: int) -> GroupStatus:
        members = self._members(group)
        record = self.records.read(group)
        return GroupStatus(
            group=group,
            members=tuple(
                MemberStatus(f.bdf, f.ids, f.class_code, f.driver, f.driver_override, f.is_bridge) for f in members
            ),
            owner=record.owner if record else None,
            phase=record.phase if record else None,
            viable=all(_viable_driver(f.driver) for f in members),
            vfio_node=self.host.io.exists(self.host.roots.dev / "vfio" / str(group)),
            record=record,
        )

    def interrupted(self) -> list[int]:
        """Groups whose record says an operation did not finish (a crash mid-bind or mid-restore)."""
        out = []
        for g in self.records.groups():
            rec = self.records.read(g)
            if rec is not None and rec.phase != "bound":
                out.append(g)
        return out

    # ---- bind ----------------------------------------------------------------------------------------------------
    def bind(self, group: int, owner: str, *, force: bool = False) -> BoundGroup:
        """Move every passthrough device of `group` to its vfio driver; a no-op when `owner` already holds it bound."""
        with self.records.lock(group, self.policy.lock_timeout):
            record = self.records.read(group)
            if record is not None:
                if record.owner != owner and not force:
                    raise GroupOwnedError(
                        f"IOMMU group {group} is held by {record.owner!r} (phase {record.phase}); "
                        "restore it as that owner, or force"
                    )
                if record.phase == "bound" and self._still_bound(record):
                    if record.owner != owner:
                        record = replace(record, owner=owner)
                        self.records.write(record)
                    return self._bound_group(record)
                log.warning("group %d: record in phase %s; rolling back before binding", group, record.phase)
                self._rollback_or_raise(record)
            return self._bind_locked(group, owner)

    def _bind_locked(self, group: int, owner: str) -> BoundGroup:
        members = self._members(group)
        moves = self._plan(group, members)
        backend = self._backend()
        self._wait_not_in_use(group, [m.fn for m in moves])
        self._ensure_drivers({m.target for m in moves}, group)
        record = GroupRecord(
            group, owner, "binding", backend,
            tuple(DeviceRecord(m.fn.bdf, m.fn.driver, m.fn.driver_override, m.target) for m in moves),
        )
        self.records.write(record)  # before the first sysfs write: restore must work whatever happens next
        crashpoint("bind-after-record")
        try:
            with self.host.uevents.subscribe() as sub:
                for move in moves:
                    self._move(group, move, sub)
                self._wait_nodes(group, backend, moves, sub)
                crashpoint("bind-after-nodes")
        except BaseException as e:
            log.warning("group %d: bind failed (%s); rolling back", group, e)
            problems = self._rollback(record)
            if problems:
                e.add_note("rollback incomplete, the record is kept for `restore`: " + "; ".join(problems))
            else:
                self.records.delete(group)
            raise
        record = replace(record, phase="bound")
        self.records.write(record)
        return self._bound_group(record)

    def _plan(self, group: int, members: list[pci.PciFunction]) -> list[_Move]:
        aliases = None
        moves: list[_Move] = []
        for fn in members:
            where = f"{fn.bdf} [{fn.ids}] in IOMMU group {group}"
            if fn.is_virtfn:
                raise SriovActiveError(f"{where} is an SR-IOV virtual function; disable SR-IOV on its parent first")
            if fn.sriov_numvfs > 0:
                raise SriovActiveError(
                    f"{where} has {fn.sriov_numvfs} SR-IOV virtual functions enabled; "
                    f"write 0 to its sriov_numvfs before passing the group through"
                )
            if fn.is_bridge:
                if fn.driver is not None and fn.driver not in HOST_SAFE_DRIVERS:
                    raise GroupNotViableError(
                        f"bridge {where} is on driver {fn.driver}, which keeps the group from being viable; "
                        "unbind it or bind it to pcieport"
                    )
                continue  # bridges and ports stay on the host
            if not self.policy.may_leave_host(fn):
                raise ForeignDeviceError(
                    f"{where} (driver {fn.driver or 'none'}) is not allowed to leave the host: a legacy IOMMU group "
                    "goes to a VM whole. Move the GPU to a slot with ACS isolation, or add this device to the admin "
                    "allow-list if handing it to the tenant is intended"
                )
            if aliases is None:
                aliases = load_aliases(self.host.io, self.host.roots)
            moves.append(_Move(fn, driver_name_for_module(choose_vfio_module(aliases, fn.modalias))))
        if not moves:
            raise GroupNotViableError(f"IOMMU group {group} holds no device to pass through (only bridges)")
        return moves

    def _backend(self) -> str:
        dev = self.host.roots.dev
        if self.policy.backend == "prefer-iommufd" and self.host.io.exists(dev / "iommu"):
            return "iommufd"
        if not self.host.io.exists(dev / "vfio" / "vfio"):
            raise BackendUnavailableError(
                f"{dev / 'vfio' / 'vfio'} is missing: the vfio module is not loaded or legacy VFIO groups are "
                "disabled (CONFIG_VFIO_GROUP); load vfio or use backend prefer-iommufd on a kernel with iommufd"
            )
        return "legacy"

    def _wait_not_in_use(self, group: int, fns: list[pci.PciFunction]) -> None:
        io, roots, clock = self.host.io, self.host.roots, self.host.clock
        deadline = clock.monotonic() + self.policy.in_use_timeout
        for fn in fns:
            if fn.driver != "nvidia":
                continue
            while pids := gpu_holders(io, roots, fn.bdf):
                if clock.monotonic() >= deadline:
                    raise GpuInUseError(
                        f"GPU {fn.bdf} in IOMMU group {group} is in use by PID(s) {', '.join(map(str, pids))} "
                        f"(open /dev/nvidia*) after waiting {self.policy.in_use_timeout:.0f}s; stop those processes "
                        "(monitoring agents, nvidia-persistenced) and retry",
                        retry_after=5.0,
                    )
                clock.sleep(min(self.policy.poll_interval * 4, max(0.0, deadline - clock.monotonic())))

    def _ensure_drivers(self, drivers: set[str], group: int) -> None:
        io, roots = self.host.io, self.host.roots
        for drv in sorted(drivers):
            if _driver_dir(roots.pci_drivers, drv, io) is not None:
                continue
            try:
                io.load_module(drv.replace("-", "_"))
            except OSError as e:
                raise BindFailedError(f"cannot load vfio driver {drv} for IOMMU group {group}: {e}") from e
            if _driver_dir(roots.pci_drivers, drv, io) is None:
                raise BindFailedError(f"module {drv} loaded but registers no PCI driver {drv}")

    def _write(self, group: int, path: Path, data: str, what: str) -> None:
        try:
            self.host.io.write_text(path, data)
        except FileNotFoundError as e:
            if not self.host.io.exists(path.parent):
                raise DeviceVanishedError(f"{what}: {path.parent} disappeared (IOMMU group {group})") from e
            raise BindFailedError(f"{what}: {path} does not exist (IOMMU group {group})") from e
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            raise BindFailedError(f"{what} failed with {name} ({e.strerror}) (IOMMU group {group})") from e

    def _move(self, group: int, move: _Move, sub: UeventSubscription) -> None:
        io, roots = self.host.io, self.host.roots
        bdf, target = move.fn.bdf, move.target
        current = pci.read_driver(io, roots, bdf)
        if _same_driver(current, target):
            return
        dev = pci.device_dir(roots, bdf)
        if current is not None:
            self._write(group, roots.pci_drivers / current / "unbind", bdf, f"unbinding {bdf} from {current}")
            self._wait(lambda: pci.read_driver(io, roots, bdf) is None, sub, group, f"{bdf} to leave {current}")
            crashpoint("bind-after-unbind")
        self._write(group, dev / "driver_override", target, f"setting driver_override of {bdf} to {target}")
        crashpoint("bind-after-override")
        drv_dir = _driver_dir(roots.pci_drivers, target, io) or roots.pci_drivers / target
        self._write(group, drv_dir / "bind", bdf, f"binding {bdf} to {target}")
        self._wait(lambda: pci.read_driver(io, roots, bdf) == drv_dir.name, sub, group, f"{bdf} to bind to {target}")
        crashpoint("bind-after-member")

    def _wait_nodes(self, group: int, backend: str, moves: list[_Move], sub: UeventSubscription) -> None:
        io, roots = self.host.io, self.host.roots
        if backend == "legacy":
            node = roots.dev / "vfio" / str(group)

            def ready() -> bool:
                return io.exists(node)

            try:
                self._wait(ready, sub, group, f"{node} to appear")
            except BindTimeoutError as e:
                self._check_viable(group, e)
                raise
            # Linux creates the node with the first vfio device, viable or not: check the whole group too.
            self._check_viable(group, None)
            return
        for move in moves:
            bdf = move.fn.bdf

            def cdev_ready(bdf: str = bdf) -> bool:
                cdev = pci.read_vfio_cdev(io, roots, bdf)
                return cdev is not None and io.exists(roots.dev / "vfio" / "devices" / cdev)

            self._wait(cdev_ready, sub, group, f"the iommufd cdev of {bdf}")

    def _check_viable(self, group: int, cause: BaseException | None) -> None:
        blockers = [f"{f.bdf} on {f.driver}" for f in self._members(group) if not _viable_driver(f.driver)]
        if blockers:
            raise GroupNotViableError(
                f"IOMMU group {group} is not viable: {', '.join(blockers)}; every device of the group must be on "
                "vfio, pcieport, pci-stub or no driver"
            ) from cause

    def _wait(self, cond: Callable[[], bool], sub: UeventSubscription, group: int, what: str) -> None:
        """Until `cond()` holds: re-check on every uevent and at the polling interval; bounded by the bind timeout."""
        clock = self.host.clock
        deadline = clock.monotonic() + self.policy.bind_timeout
        while not cond():
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise BindTimeoutError(
                    f"timed out after {self.policy.bind_timeout:.1f}s waiting for {what} (IOMMU group {group}); "
                    "check dmesg for probe errors",
                    retry_after=self.policy.bind_timeout,
                )
            sub.next(min(self.policy.poll_interval, remaining))

    # ---- restore -------------------------------------------------------------------------------------------------
    def restore(self, group: int, owner: str, *, force: bool = False) -> None:
        """Put every recorded device back on exactly its original driver; a no-op when nothing is recorded."""
        with self.records.lock(group, self.policy.lock_timeout):
            record = self.records.read(group)
            if record is None:
                return
            if record.owner != owner and not force:
                raise GroupOwnedError(
                    f"IOMMU group {group} is held by {record.owner!r}, not {owner!r}; restore as that owner, or force"
                )
            self._rollback_or_raise(record)

    def recover(self, group: int) -> bool:
        """Finish an interrupted bind or restore by rolling back to the originals; True when something was done.

        A group in phase `bound` is left alone: it belongs to a running workload, and a restart must not touch it.
        """
        with self.records.lock(group, self.policy.lock_timeout):
            record = self.records.read(group)
            if record is None or record.phase == "bound":
                return False
            self._rollback_or_raise(record)
            return True

    def _rollback_or_raise(self, record: GroupRecord) -> None:
        self._refuse_if_held(record)
        if record.phase != "restoring":
            self.records.write(replace(record, phase="restoring"))
        crashpoint("restore-after-marked")
        problems = self._rollback(record)
        if problems:
            raise RestoreFailedError(
                f"IOMMU group {record.group} not fully restored: {'; '.join(problems)}. "
                "The record is kept; fix the cause and run restore again"
            )
        crashpoint("restore-before-delete")
        self.records.delete(record.group)

    def _refuse_if_held(self, record: GroupRecord) -> None:
        """Refuse to hand back a group whose VFIO node a process (a VMM) still holds.

        Linux's vfio-pci `unbind` does not fail while userspace holds the device: it blocks, uninterruptibly, until the
        device is released ("blocked until released by user"), which would hang this process with the group lock held.
        So look before writing, and leave the group exactly as it is; the caller retries once the VM is gone.
        """
        io, roots = self.host.io, self.host.roots
        if record.backend == "legacy":
            nodes = [f"/dev/vfio/{record.group}"]
        else:
            nodes = []
            for dev in record.devices:
                try:
                    cdev = pci.read_vfio_cdev(io, roots, dev.bdf)
                except DeviceVanishedError:
                    continue
                if cdev:
                    nodes.append(f"/dev/vfio/devices/{cdev}")
        held = {node: pids for node in nodes if (pids := holders(io, roots, node))}
        if held:
            who = "; ".join(f"{node} by pid {', '.join(map(str, pids))}" for node, pids in held.items())
            raise GroupInUseError(
                f"IOMMU group {record.group} is still open ({who}); stop the VM that uses it, then restore again",
                retry_after=1.0,
            )

    def _rollback(self, record: GroupRecord) -> list[str]:
        """Best effort, device by device, in reverse order; returns what could not be restored."""
        problems: list[str] = []
        io, roots = self.host.io, self.host.roots
        with self.host.uevents.subscribe() as sub:
            for dev_rec in reversed(record.devices):
                bdf, original = dev_rec.bdf, dev_rec.original_driver
                try:
                    current = pci.read_driver(io, roots, bdf)
                    override = _read_override(io, pci.device_dir(roots, bdf))
                    if current == original and override == dev_rec.original_override:
                        continue
                    if current is not None and current != original:
                        self._write(record.group, roots.pci_drivers / current / "unbind", bdf, f"unbinding {bdf}")
                        self._wait(_driver_is(io, roots, bdf, None), sub, record.group, f"{bdf} to leave {current}")
                        crashpoint("restore-after-unbind")
                    self._write(
                        record.group,
                        pci.device_dir(roots, bdf) / "driver_override",
                        dev_rec.original_override or "\n",
                        f"restoring driver_override of {bdf}",
                    )
                    if original is not None and current != original:
                        drv_dir = _driver_dir(roots.pci_drivers, original, io) or roots.pci_drivers / original
                        self._write(record.group, drv_dir / "bind", bdf, f"binding {bdf} back to {original}")
                        self._wait(
                            _driver_is(io, roots, bdf, drv_dir.name),
                            sub,
                            record.group,
                            f"{bdf} to return to {original}",
                        )
                    crashpoint("restore-after-member")
                except DeviceVanishedError:
                    log.warning("group %d: %s vanished; nothing to restore for it", record.group, bdf)
                except (BindFailedError, BindTimeoutError) as e:
                    problems.append(f"{bdf} -> {original or 'no driver'}: {e}")
        return problems

    # ---- reset ---------------------------------------------------------------------------------------------------
    def reset_function(self, bdf: str) -> None:
        """Reset the function (FLR or whatever `reset_method` offers) so no tenant data survives a hand-back."""
        dev = pci.device_dir(self.host.roots, bdf)
        try:
            method = self.host.io.read_text(dev / "reset_method").strip()
        except FileNotFoundError:
            method = ""
        if not method:
            raise ResetUnsupportedError(f"{bdf} offers no reset method; it cannot be scrubbed before reuse")
        try:
            self.host.io.write_text(dev / "reset", "1")
        except OSError as e:
            raise ResetUnsupportedError(f"reset of {bdf} ({method}) failed: {e.strerror or e}") from e

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _still_bound(self, record: GroupRecord) -> bool:
        io, roots = self.host.io, self.host.roots
        try:
            drivers_ok = all(_same_driver(pci.read_driver(io, roots, d.bdf), d.target_driver) for d in record.devices)
        except DeviceVanishedError:
            return False
        if not drivers_ok:
            return False
        if record.backend == "legacy":
            return io.exists(roots.dev / "vfio" / str(record.group))
        return all(pci.read_vfio_cdev(io, roots, d.bdf) is not None for d in record.devices)

    def _bound_group(self, record: GroupRecord) -> BoundGroup:
        io, roots = self.host.io, self.host.roots
        devices = tuple(
            BoundDevice(d.bdf, d.original_driver, d.target_driver, pci.read_vfio_cdev(io, roots, d.bdf))
            for d in record.devices
        )
        if record.backend == "legacy":
            nodes: tuple[str, ...] = (f"/dev/vfio/{record.group}",)
            control: tuple[str, ...] = ("/dev/vfio/vfio",)
        else:
            nodes = tuple(f"/dev/vfio/devices/{d.vfio_cdev}" for d in devices if d.vfio_cdev)
            control = ("/dev/iommu",)
        return BoundGroup(record.group, record.owner, record.backend, devices, nodes, control)


def _viable_driver(driver: str | None) -> bool:
    return driver is None or is_vfio_driver(driver) or driver in HOST_SAFE_DRIVERS


def _driver_is(io: HostIO, roots: HostRoots, bdf: str, driver: str | None) -> Callable[[], bool]:
    return lambda: _same_driver(pci.read_driver(io, roots, bdf), driver)


def _same_driver(a: str | None, b: str | None) -> bool:
    return (a or "").replace("-", "_") == (b or "").replace("-", "_") and (a is None) == (b is None)


def _read_override(io: HostIO, dev: Path) -> str | None:
    try:
        value = io.read_text(dev / "driver_override").strip()
    except FileNotFoundError:
        return None
    return None if value in ("", "(null)") else value


def _driver_dir(drivers: Path, name: str, io: HostIO) -> Path | None:
    """The driver's directory, whichever of `-` and `_` the kernel used to spell it."""
    for candidate in dict.fromkeys((name, name.replace("-", "_"), name.replace("_", "-"))):
        if io.exists(drivers / candidate):
            return drivers / candidate
    return None
