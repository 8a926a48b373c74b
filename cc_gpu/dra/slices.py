"""ResourceSlices: the desired slices computed purely from the inventory, and a publisher that writes only differences.

One pool per node, named after the node; devices in name order, at most 128 per slice (64 when any device carries
taints). Attributes use the driver's own domain when unqualified and the standard `resource.kubernetes.io/` names for
PCI bus ID and PCIe root; at most 32 attributes plus capacities per device. Publishing follows the upstream helper:
owner reference to the Node, `pool.generation` bumped whenever the pool changes, obsolete slices deleted with
preconditions, changed slices updated, and **no write at all when nothing changed**.

"Nothing changed" is decided against what the server stores, which is not what was sent: it drops empty lists
(`omitempty`), stamps `timeAdded` on taints and stores quantities in canonical form. The comparison normalises
both sides for those, and a taint keeps the `timeAdded` the server gave it when its slice is rewritten. Whatever
the server changes beyond that, the publisher also remembers the resourceVersion the server answered to its own
last write of each slice with what it asked for then: a slice still at that version already says what was asked.
So a changed pool costs one write per slice, and steady state none, also against server defaulting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cc_gpu.dra.bindcfg import FAILED_CONDITION, READY_CONDITION
from cc_gpu.dra.crashpoints import crashpoint
from cc_gpu.dra.ports import GpuView
from cc_gpu.kube.api import KubeApi
from cc_gpu.kube.errors import ConflictError, NotFoundError
from cc_gpu.kube.quantity import canonical

log = logging.getLogger("cc_gpu.dra.slices")

MAX_DEVICES = 128
MAX_DEVICES_TAINTED = 64
MAX_ATTRS = 32
MAX_STRING = 64
UNHEALTHY_TAINT_KEY = "cc-gpu.io/unhealthy"
MAX_TAINT_VALUE = 63  # a label value
DROPPABLE = ("taints", "bindingConditions")
"""Device fields a server with the feature gate off drops silently from a stored slice (`dropped`)."""


def _s(value: str) -> dict[str, str]:
    return {"string": value[:MAX_STRING]}


def device_json(gpu: GpuView) -> dict[str, Any]:
    """The ResourceSlice `devices[]` entry for one advertised device."""
    attrs: dict[str, Any] = {
        "type": _s("gpu"),
        "vendorID": _s(gpu.vendor_id),
        "deviceID": _s(gpu.device_id),
        "productName": _s(gpu.product_name or "unknown"),
        "architecture": _s(gpu.architecture or "unknown"),
        "resource.kubernetes.io/pciBusID": _s(gpu.bdf),
        "numaNode": {"int": gpu.numa_node},
        "iommuGroup": {"int": gpu.iommu_group},
        "iommuFD": {"bool": gpu.iommufd},
        "groupSize": {"int": len(gpu.members)},
        "gpuCount": {"int": len(gpu.gpus)},
        "ccCapable": {"bool": gpu.cc_capable},
        "ccMode": _s(gpu.cc_mode),
        "driver": _s(gpu.driver or "none"),
    }
    if gpu.pcie_root:
        attrs["resource.kubernetes.io/pcieRoot"] = _s(gpu.pcie_root)
    attrs.update(gpu.attributes)
    capacity: dict[str, Any] = {}
    if gpu.memory_bytes:
        capacity["memory"] = {"value": canonical(str(gpu.memory_bytes))}
    assert len(attrs) + len(capacity) <= MAX_ATTRS
    out: dict[str, Any] = {"name": gpu.name, "attributes": attrs}
    if capacity:
        out["capacity"] = capacity
    taints = [{"key": UNHEALTHY_TAINT_KEY, "value": "true", "effect": "NoSchedule"}] if not gpu.healthy else []
    # Quarantine is NoSchedule, never NoExecute: eviction would kill a confidential VM that runs on the GPU.
    taints += [{"key": key, "value": value[:MAX_TAINT_VALUE], "effect": "NoSchedule"} for key, value in gpu.taints]
    if taints:
        out["taints"] = taints
    if gpu.binding_conditions:
        out["bindingConditions"] = [READY_CONDITION]
        out["bindingFailureConditions"] = [FAILED_CONDITION]
    return out


def desired_device_lists(devices: Sequence[GpuView]) -> list[list[dict[str, Any]]]:
    """Devices split into slices, in name order, respecting the per-slice limits."""
    entries = [device_json(g) for g in sorted(devices, key=lambda g: g.name)]
    limit = MAX_DEVICES_TAINTED if any("taints" in e for e in entries) else MAX_DEVICES
    return [entries[i : i + limit] for i in range(0, len(entries), limit)] or [[]]


@dataclass(frozen=True)
class NodeRef:
    name: str
    uid: str


def slice_name(node: str, driver: str, index: int) -> str:
    base = f"{node}-{driver.replace('.', '-')}"[:240]
    return f"{base}-{index}"


def desired_slices(driver: str, node: NodeRef, generation: int, devices: Sequence[GpuView]) -> list[dict[str, Any]]:
    """The complete ResourceSlice objects this node should have."""
    lists = desired_device_lists(devices)
    return [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {
                "name": slice_name(node.name, driver, i),
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node.uid, "controller": True}
                ],
            },
            "spec": {
                "driver": driver,
                "nodeName": node.name,
                "pool": {"name": node.name, "generation": generation, "resourceSliceCount": len(lists)},
                "devices": devs,
            },
        }
        for i, devs in enumerate(lists)
    ]


def _normalized(value: Any) -> Any:
    """A spec as the server stores it, for comparison: no empty lists or maps, canonical quantities, no taint times."""
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            if key == "timeAdded":
                continue  # stamped by the server; a stored time never differs from "no time asked for"
            kept = canonical(child) if key == "value" and isinstance(child, str) else _normalized(child)
            if kept not in ([], {}, None):
                out[key] = kept
        return out
    if isinstance(value, list):
        return [_normalized(item) for item in value]
    return value


def _comparable(obj: Mapping[str, Any]) -> Any:
    spec = dict(obj.get("spec") or {})
    pool = dict(spec.pop("pool", {}) or {})
    pool.pop("generation", None)
    owners = (obj.get("metadata") or {}).get("ownerReferences")
    return _normalized({"spec": spec, "pool": pool, "owners": owners})


def _same(current: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """Whether a stored slice already says what `want` says (ignoring the generation, compared separately)."""
    return bool(_comparable(current) == _comparable(want))


def _keep_taint_times(body: dict[str, Any], current: Mapping[str, Any]) -> None:
    """Carry the server's `timeAdded` of each taint still present, so a rewrite does not restart its clock."""
    stored = {
        (d.get("name"), t.get("key"), t.get("value"), t.get("effect")): t.get("timeAdded")
        for d in (current.get("spec") or {}).get("devices") or []
        for t in d.get("taints") or []
    }
    for device in body["spec"].get("devices") or []:
        for taint in device.get("taints") or []:
            when = stored.get((device.get("name"), taint.get("key"), taint.get("value"), taint.get("effect")))
            if when and "timeAdded" not in taint:
                taint["timeAdded"] = when


class SlicePublisher:
    """Keeps this node's slices equal to the desired ones with the fewest API writes (none when nothing changed)."""

    def __init__(self, kube: KubeApi, driver: str, node: NodeRef) -> None:
        self.kube = kube
        self.driver = driver
        self.node = node
        self._lock = threading.Lock()
        self.writes = 0
        self._written: dict[str, tuple[str, Any]] = {}
        self.dropped: set[str] = set()
        """`DROPPABLE` fields the server was seen to drop (its DRADeviceTaints / DRADeviceBindingConditions off)."""
        """Per slice name: the resourceVersion the server answered to our last write, and what that write asked."""

    def _note_dropped(self, sent: Mapping[str, Any], stored: Mapping[str, Any]) -> None:
        """Remember which feature fields the server dropped from what was sent: it does not support them."""
        kept = {d.get("name"): d for d in (stored.get("spec") or {}).get("devices") or []}
        for device in (sent.get("spec") or {}).get("devices") or []:
            for key in DROPPABLE:
                if device.get(key) and not (kept.get(device.get("name")) or {}).get(key) and key not in self.dropped:
                    self.dropped.add(key)
                    log.warning("the API server dropped a device field: its feature gate is off there",
                                extra={"field": key, "device": device.get("name")})

    def publish(self, devices: Sequence[GpuView]) -> int:
        """Reconcile; return the number of API writes made."""
        with self._lock:
            for _ in range(5):
                try:
                    return self._publish_once(devices)
                except (ConflictError, NotFoundError):
                    continue  # someone else changed a slice under us; re-read and converge
            return 0

    def _says(self, current: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
        """Whether a stored slice says what `want` says: equal once normalised, or untouched since we wrote it so."""
        if _same(current, want):
            return True
        remembered = self._written.get(str(current["metadata"]["name"]))
        version = str((current.get("metadata") or {}).get("resourceVersion", ""))
        return remembered is not None and remembered == (version, _comparable(want))

    def _publish_once(self, devices: Sequence[GpuView]) -> int:
        current = {s["metadata"]["name"]: s for s in self.kube.list_resource_slices(self.driver, self.node.name)}
        generations = [int(((s.get("spec") or {}).get("pool") or {}).get("generation", 0)) for s in current.values()]
        generation = max(generations, default=0)
        want = desired_slices(self.driver, self.node, generation, devices)
        want_names = {s["metadata"]["name"] for s in want}
        unchanged = (
            set(current) == want_names
            and all(self._says(current[s["metadata"]["name"]], s) for s in want)
            and len(set(generations)) == 1
        )
        if unchanged:
            return 0
        generation += 1  # any change to the pool: every slice carries the new generation, old ones are dropped
        want = desired_slices(self.driver, self.node, generation, devices)
        writes = 0
        for s in want:
            name = s["metadata"]["name"]
            if name in current:
                body = dict(s)
                body["metadata"] = {**s["metadata"], "resourceVersion": current[name]["metadata"]["resourceVersion"]}
                _keep_taint_times(body, current[name])
                stored = self.kube.update_resource_slice(body)
            else:
                stored = self.kube.create_resource_slice(s)
            self._written[name] = (str((stored.get("metadata") or {}).get("resourceVersion", "")), _comparable(s))
            self._note_dropped(s, stored)
            writes += 1
            crashpoint("publish-after-write")
        for name, cur in current.items():
            if name not in want_names:
                meta = cur["metadata"]
                self.kube.delete_resource_slice(name, uid=meta["uid"], resource_version=meta["resourceVersion"])
                self._written.pop(name, None)
                writes += 1
                crashpoint("publish-after-write")
        self.writes += writes
        log.info("published resource slices", extra={"writes": writes, "generation": generation})
        return writes
