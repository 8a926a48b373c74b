"""What the real server changes in an object before it stores it: defaulting, canonical forms, dropped fields.

A client reading back what it wrote sees these changes, so the double makes them too (before validation, as the
real server's decoding and `PrepareForCreate`/`PrepareForUpdate` do) for the resource.k8s.io objects:

- empty lists and maps vanish, empty structs stay `{}` (the Go types mark them `omitempty`); opaque parameters
  and device-status data, kept as the bytes sent, are left alone;
- ResourceSlice device taints get `timeAdded` (`pkg/apis/resource/v1/defaults.go`); capacities are stored in the
  quantity's canonical form;
- a request's `exactly.allocationMode` defaults to `ExactCount` and its `count` to 1 (also in `firstAvailable`);
- a ResourceClaim's `status.devices` entries for devices that are no longer allocated are dropped silently
  (`dropDeallocatedStatusDevices` in the claim's registry strategy).
"""

from __future__ import annotations

from typing import Any

from cc_gpu.kube.apiserver.resources import ResourceType
from cc_gpu.kube.quantity import canonical

JsonObject = dict[str, Any]
_VERBATIM = frozenset({"parameters", "data", "metadata"})
"""RawExtension fields (kept as sent) and object metadata: never pruned."""
_MAPS = frozenset({"attributes", "capacity"})
"""Go maps, which `omitempty` drops when empty (an empty struct is still encoded as `{}`)."""


def _prune_empty(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            kept = child if key in _VERBATIM else _prune_empty(child)
            if kept is None or (key not in _VERBATIM and (kept == [] or (kept == {} and key in _MAPS))):
                continue
            out[key] = kept
        return out
    if isinstance(value, list):
        return [_prune_empty(item) for item in value]
    return value


def _default_requests(devices: Any) -> None:
    for request in (devices or {}).get("requests") or []:
        if not isinstance(request, dict):
            continue
        for exact in [request.get("exactly"), *(request.get("firstAvailable") or [])]:
            if not isinstance(exact, dict):
                continue
            exact.setdefault("allocationMode", "ExactCount")
            if exact["allocationMode"] == "ExactCount" and not exact.get("count"):
                exact["count"] = 1


def _device_ids(status: Any) -> set[tuple[Any, ...]]:
    results = (((status or {}).get("allocation") or {}).get("devices") or {}).get("results") or []
    return {(r.get("driver"), r.get("pool"), r.get("device"), r.get("shareID")) for r in results if isinstance(r, dict)}


def drop_deallocated_status_devices(new: JsonObject, old: JsonObject | None) -> None:
    """Drop `status.devices` of devices that the old allocation had and the new one no longer has."""
    if old is None:
        return
    gone = _device_ids(old.get("status")) - _device_ids(new.get("status"))
    status = new.get("status")
    if not gone or not isinstance(status, dict) or not isinstance(status.get("devices"), list):
        return
    status["devices"] = [
        d
        for d in status["devices"]
        if not isinstance(d, dict) or (d.get("driver"), d.get("pool"), d.get("device"), d.get("shareID")) not in gone
    ]


def prepare_for_write(rt: ResourceType, old: JsonObject | None, new: JsonObject, now: str) -> JsonObject:
    """`new` as the real server would store it (over `old` for an update); returns the object to validate."""
    if rt.group != "resource.k8s.io":
        return new
    if rt.kind == "ResourceSlice":
        for device in (new.get("spec") or {}).get("devices") or []:
            if not isinstance(device, dict):
                continue
            for taint in device.get("taints") or []:
                if isinstance(taint, dict) and not taint.get("timeAdded"):
                    taint["timeAdded"] = now
            for capacity in (device.get("capacity") or {}).values():
                if isinstance(capacity, dict) and isinstance(capacity.get("value"), str):
                    capacity["value"] = canonical(capacity["value"])
    elif rt.kind == "ResourceClaim":
        new.setdefault("status", {})  # a struct, never omitted
        _default_requests((new.get("spec") or {}).get("devices"))
        drop_deallocated_status_devices(new, old)
    elif rt.kind == "ResourceClaimTemplate":
        if isinstance(new.get("spec"), dict):
            new["spec"].setdefault("metadata", {})  # ObjectMeta, a struct: `{}` when empty
        _default_requests(((new.get("spec") or {}).get("spec") or {}).get("devices"))
    pruned: JsonObject = _prune_empty(new)
    return pruned
