"""Reading a ResourceClaim as this driver sees it: the checks and the per-request config, computed purely.

`parse_claim` turns the claim JSON into a `ClaimPlan`: the allocated devices of this driver (results of other drivers
skipped), their requests with sub-request suffixes stripped, the effective opaque config of each, and the single pod
the claim is reserved for. Anything that makes the claim unusable is a typed error naming the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cc_gpu.dra import opaque
from cc_gpu.dra.errors import ClaimError
from cc_gpu.dra.gate import check_reserved_for
from cc_gpu.dra.ports import GpuView


@dataclass(frozen=True)
class PlannedDevice:
    request: str  # the request name as the kubelet wants it back (sub-request suffix stripped)
    pool: str
    device: GpuView
    config: opaque.VfioDeviceConfig


@dataclass(frozen=True)
class ClaimPlan:
    uid: str
    namespace: str
    name: str
    devices: tuple[PlannedDevice, ...]
    pod: Mapping[str, Any]  # the reservedFor entry


def parse_claim(
    claim: Mapping[str, Any],
    uid: str,
    driver: str,
    pool: str,
    inventory: Mapping[str, GpuView],
) -> ClaimPlan:
    """Check `claim` against the UID the kubelet sent and the node's inventory; return what to prepare."""
    try:
        return _parse(claim, uid, driver, pool, inventory)
    except (AttributeError, TypeError, KeyError, ValueError) as e:
        # The API server validates claims against their schema, so this takes a broken server or a hostile double;
        # either way the claim fails on its own with a typed error instead of an internal one.
        raise ClaimError(f"claim document is malformed: {type(e).__name__}: {e}") from e


def _parse(
    claim: Mapping[str, Any],
    uid: str,
    driver: str,
    pool: str,
    inventory: Mapping[str, GpuView],
) -> ClaimPlan:
    meta = claim.get("metadata") or {}
    if meta.get("uid") != uid:
        raise ClaimError(f"claim UID is {meta.get('uid')!r}, the kubelet asked for {uid!r}: the claim was replaced")
    status = claim.get("status") or {}
    allocation = status.get("allocation")
    if not allocation:
        raise ClaimError("claim is not allocated")
    alloc_devices = allocation.get("devices") or {}
    results: Sequence[Mapping[str, Any]] = alloc_devices.get("results") or []
    ours = [r for r in results if r.get("driver") == driver]
    if not ours:
        raise ClaimError(f"claim has no devices allocated by driver {driver}")
    entries = opaque.entries_for_driver(alloc_devices.get("config") or [], driver)
    planned: list[PlannedDevice] = []
    for result in ours:
        request = str(result.get("request", ""))
        name = str(result.get("device", ""))
        if result.get("adminAccess"):
            raise ClaimError(
                f"request {request!r} asks for adminAccess to {name}: monitoring access to a GPU owned by a VM "
                "is not offered"
            )
        if result.get("pool") != pool:
            got = result.get("pool")
            raise ClaimError(f"device {name} is allocated from pool {got!r}, this node's pool is {pool!r}")
        if name not in inventory:
            raise ClaimError(f"device {name} is not a device of this node's pool {pool!r}")
        planned.append(PlannedDevice(request.split("/", 1)[0], pool, inventory[name], opaque.resolve(entries, request)))
    pod = check_reserved_for(status.get("reservedFor") or [])
    return ClaimPlan(uid, str(meta.get("namespace", "")), str(meta.get("name", "")), tuple(planned), pod)
