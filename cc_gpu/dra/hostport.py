"""Adapts the host layer (`cc_gpu.host`) to the plugin's `HostPort`: discovery into advertised devices, the binder.

Device names are derived from the PCI address (`gpu-0000-3b-00-0`), which is stable across reboots and driver
changes; when several GPUs share one IOMMU group they are one device, named after the first of them, because VFIO can
only hand the group out as a whole. Device selection happens here too: the admin picks all GPUs, a list of PCI
addresses, or those named in a node label, so another driver can keep the rest of the node's GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cc_gpu.dra.ports import BoundNodes, GpuView
from cc_gpu.dra.settings import PluginSettings, Selection
from cc_gpu.errors import CcGpuError
from cc_gpu.host import Host
from cc_gpu.host.binder import Binder, BindPolicy
from cc_gpu.host.discovery import Gpu, Inventory, discover
from cc_gpu.host.errors import ResetUnsupportedError
from cc_gpu.host.nvml import PROCESS_GATE
from cc_gpu.host.tee import read_host_tee
from cc_gpu.kube.api import KubeApi
from cc_gpu.kube.errors import ApiError

log = logging.getLogger("cc_gpu.dra.hostport")
BOOT_ID = Path("sys/kernel/random/boot_id")


def device_name_for(bdf: str) -> str:
    """The DNS-label device name for a PCI address: `0000:3b:00.0` -> `gpu-0000-3b-00-0`."""
    return "gpu-" + bdf.lower().replace(":", "-").replace(".", "-")


def _label_tokens(value: str) -> set[str]:
    """A node label value lists GPUs as `_`-separated short addresses: `3b-00-0_0000-86-00-0` (or `all`)."""
    return {t for t in value.lower().split("_") if t}


def _selected(bdf: str, selection: Selection, label_value: str | None) -> bool:
    if selection.mode == "all":
        return True
    if selection.mode == "pci":
        return bdf.lower() in selection.pci
    if not label_value:
        return False
    tokens = _label_tokens(label_value)
    short = bdf.lower().replace(":", "-").replace(".", "-")
    return "all" in tokens or short in tokens or short.removeprefix("0000-") in tokens


def views_from(inventory: Inventory, selection: Selection, label_value: str | None = None) -> list[GpuView]:
    """The advertised devices: one per IOMMU group holding selected GPUs (a group is advertised whole or not at all)."""
    out: list[GpuView] = []
    for unit in inventory.units:
        gpus = [g for b in unit.gpus if (g := inventory.gpu(b)) is not None]
        if not gpus or not all(_selected(g.bdf, selection, label_value) for g in gpus):
            continue
        first: Gpu = gpus[0]
        group = inventory.group(unit.iommu_group)
        members = tuple(m.bdf for m in group.members) if group else (first.bdf,)
        modes = {g.cc_mode for g in gpus}
        out.append(GpuView(
            name=device_name_for(first.bdf),
            bdf=first.bdf,
            gpus=tuple(g.bdf for g in gpus),
            members=members,
            iommu_group=unit.iommu_group,
            vendor_id=f"0x{first.vendor_id:04x}",
            device_id=f"0x{first.device_id:04x}",
            product_name=first.product_name,
            architecture=first.architecture,
            numa_node=first.numa_node if first.numa_node is not None else -1,
            pcie_root=first.pcie_root.split("/", 1)[0],  # the root complex, as resource.kubernetes.io/pcieRoot
            iommufd=inventory.iommufd,  # QEMU opens /dev/iommu for a cdev: without it no cdev can be used
            cc_capable=first.cc_mode not in ("unsupported", "unknown"),
            cc_mode=modes.pop() if len(modes) == 1 else "mixed",
            driver=first.driver,
            memory_bytes=sum(g.memory_bytes or 0 for g in gpus) or None,
            healthy=first.sriov_numvfs == 0,
            health_message="" if first.sriov_numvfs == 0 else "SR-IOV virtual functions are enabled",
            functions=sum(1 for m in group.members if not m.is_bridge) if group else len(gpus),
        ))
    return out


class HostAdapter:
    """`HostPort` over a `cc_gpu.host.Host`."""

    def __init__(self, host: Host, selection: Selection, label_value: Callable[[], str | None] | None = None,
                 bind_policy: BindPolicy | None = None) -> None:
        self.host = host
        self.selection = selection
        self.label_value = label_value or (lambda: None)
        self.bind_policy = bind_policy or BindPolicy()  # the backend is chosen per bind; the rest applies to all
        self._binders: dict[str, Binder] = {}
        self._lock = threading.Lock()
        self._last_cc: dict[str, str] = {}  # bdf -> CC mode last read while the host driver held the GPU

    def _binder(self, backend: str) -> Binder:
        with self._lock:
            if backend not in self._binders:
                self._binders[backend] = Binder(self.host, replace(self.bind_policy, backend=backend))
            return self._binders[backend]

    def devices(self) -> list[GpuView]:
        views = views_from(discover(self.host), self.selection, self.label_value())
        return [self._with_remembered_cc(v) for v in views]

    def _with_remembered_cc(self, view: GpuView) -> GpuView:
        """A GPU on vfio is never read (it may belong to a VM): while *we* hold its group, report the mode it had
        when we took it, so preparing a claim does not flip the published mode to `unknown`. A group on vfio that
        we do not hold stays `unknown`, and the gate refuses it."""
        with self._lock:
            if view.cc_mode not in ("unknown", "mixed"):
                for bdf in view.gpus:
                    self._last_cc[bdf] = view.cc_mode
                return view
            remembered = {self._last_cc.get(b) for b in view.gpus}
        if len(remembered) != 1 or None in remembered or not (view.driver or "").startswith("vfio"):
            return view
        if self._binder("legacy").status(view.iommu_group).owner is None:
            return view
        return replace(view, cc_mode=remembered.pop() or view.cc_mode)

    def tee_enabled(self) -> bool:
        return read_host_tee(self.host.io, self.host.roots).any

    def tee_kinds(self) -> tuple[str, ...]:
        return read_host_tee(self.host.io, self.host.roots).kinds

    def boot_id(self) -> str:
        try:
            return self.host.io.read_text(self.host.roots.proc / BOOT_ID).strip()
        except OSError:
            return "unknown"

    def _backend_for(self, iommu_mode: str) -> str:
        if iommu_mode == "iommufd":
            return "prefer-iommufd"
        if iommu_mode == "legacy":
            return "legacy"
        legacy_available = self.host.io.exists(self.host.roots.dev / "vfio" / "vfio")
        return "legacy" if legacy_available else "prefer-iommufd"

    def bind(self, group: int, owner: str, iommu_mode: str) -> BoundNodes:
        # No NVML session of ours may hold /dev/nvidia* while the binder checks who holds the GPU (host/nvml.py).
        with PROCESS_GATE.quiet():
            bound = self._binder(self._backend_for(iommu_mode)).bind(group, owner)
        originals = {d.bdf: d.original_driver for d in bound.devices}
        return BoundNodes(nodes=tuple(bound.device_nodes), original_drivers=originals, mode=bound.backend)

    def bound_groups(self) -> dict[int, str]:
        records = self._binder("legacy").records
        out: dict[int, str] = {}
        for group in records.groups():
            with contextlib.suppress(CcGpuError):
                record = records.read(group)
                if record is not None:
                    out[group] = record.owner
        return out

    def restore(self, group: int, owner: str, reset: bool) -> None:
        binder = self._binder("legacy")
        status = binder.status(group)
        if status.owner is None:
            return  # nothing recorded: the bind never started, or the group is already back
        if status.owner != owner:
            # Another claim holds this group (a bind of ours was refused because of it): not ours to touch.
            log.warning("group held by another claim; left alone", extra={"group": group, "holder": status.owner,
                                                                          "claim_uid": owner})
            return
        if reset:
            for member in status.members:
                if member.is_bridge or not (member.driver or "").startswith("vfio"):
                    continue
                try:
                    binder.reset_function(member.bdf)
                except ResetUnsupportedError as e:
                    log.warning("function not reset", extra={"bdf": member.bdf, "error": str(e)})
        binder.restore(group, owner)


def build_host(settings: PluginSettings, kube: KubeApi) -> tuple[HostAdapter, Callable[[float], bool]]:
    """The host adapter for `settings` (real or simulated) and a function that waits for hardware uevents."""
    if settings.sim:
        from cc_gpu.host.sim import create_sim_host  # noqa: PLC0415  (simulation only)

        root = settings.sim_root or settings.plugin_path / "sim"
        host = create_sim_host(settings.sim, root, state=settings.plugin_path / "host-state")
    else:
        host = Host.real(sysfs=settings.sysfs_root, dev=settings.dev_root, proc=settings.proc_root,
                         state=settings.plugin_path / "host-state")
    label_value: Callable[[], str | None] | None = None
    if settings.selection.mode == "label":
        key = settings.selection.label

        def label_value() -> str | None:
            try:
                labels = (kube.get_node(settings.node_name).get("metadata") or {}).get("labels") or {}
            except ApiError as e:
                log.warning("cannot read node labels; advertising nothing", extra={"error": str(e)})
                return None
            value = labels.get(key)
            return str(value) if value is not None else None

    adapter = HostAdapter(host, settings.selection, label_value)
    subscription = host.uevents.subscribe()

    def wait_for_change(timeout: float) -> bool:
        with contextlib.suppress(OSError):
            event = subscription.next(timeout)
            return event is not None and event.subsystem in ("pci", "")
        return False

    return adapter, wait_for_change
