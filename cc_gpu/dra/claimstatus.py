"""This driver's entries in a ResourceClaim's `status.devices`, written by server-side apply.

`status.devices` is a list map keyed by driver, device, pool and shareID, and each entry's `conditions` a list map
keyed by type (resource.k8s.io/v1 types; neither has a strategic-merge key, so a merge or strategic patch would
replace the whole list). Server-side apply merges along those keys: the plugin owns exactly the entries and the
conditions it applies under its field manager, and nothing else in the claim is sent or rewritten:

- `status.allocation` (checked byte for byte by the server, with opaque parameters kept as the bytes the scheduler
  sent) and `status.reservedFor` are never part of the request;
- other drivers' entries, and the conditions other field managers (an attestation service, binding-condition code)
  apply to the same device entry, stay as they are;
- applying again replaces this manager's previous conditions and data for those devices; a condition whose status
  did not change keeps its `lastTransitionTime`.

The API allows at most 8 conditions per device entry, across all writers; one writer here applies at most
`MAX_OWN_CONDITIONS`, leaving room for the others.

**The allocation's bytes.** The server keeps opaque parameters (`status.allocation.devices.config[].opaque.parameters`,
copied by the scheduler from the DeviceClass or claim) as the bytes their author sent, and refuses any status write
whose allocation is not byte-identical (`field cannot be modified once set`). Apply and strategic-merge patches
re-encode the stored object canonically (compact, keys sorted) before comparing, so they are refused when those
bytes have keys out of order, which a Go client marshalling a struct produces; a JSON patch keeps the key order of
untouched values and is then accepted. So when the server refuses an apply because of `status.allocation`, this writer
falls back to a JSON patch of `status.devices` (its entries merged into the stored ones by key and condition type),
conditional on the resourceVersion it read. Bytes with whitespace inside (a client that pretty-prints) defeat every
JSON write; the writer then logs why, and the prepare still succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cc_gpu.kube.api import RESOURCE_API_VERSION, KubeApi
from cc_gpu.kube.errors import ApiError, ConflictError, InvalidError

log = logging.getLogger("cc_gpu.dra.claimstatus")

MAX_CONDITIONS = 8
"""The API's limit per `status.devices[]` entry, all writers together."""
MAX_OWN_CONDITIONS = 4
"""How many of them one field manager of this driver may apply."""


def field_manager(driver: str, concern: str = "kubelet-plugin") -> str:
    """The field manager a writer of this driver applies as: one per concern, so their conditions never clash."""
    return f"{driver}/{concern}"[:128]


@dataclass(frozen=True)
class DeviceStatus:
    """What one writer says about one allocated device."""

    pool: str
    device: str
    conditions: tuple[Mapping[str, Any], ...] = ()
    data: Mapping[str, Any] | None = None
    share_id: str | None = None
    _types: tuple[str, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        merged = merge_conditions((), self.conditions)
        if len(merged) > MAX_OWN_CONDITIONS:
            raise ValueError(f"{len(merged)} conditions for {self.pool}/{self.device}; at most {MAX_OWN_CONDITIONS}")
        object.__setattr__(self, "conditions", tuple(merged))

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.pool, self.device, self.share_id)


def merge_conditions(
    existing: Iterable[Mapping[str, Any]], updates: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Conditions merged by type, later ones winning; an unchanged status keeps its `lastTransitionTime`."""
    merged: dict[str, dict[str, Any]] = {}
    for condition in existing:
        merged[str(condition.get("type"))] = dict(condition)
    for condition in updates:
        kind = str(condition.get("type"))
        update = dict(condition)
        before = merged.get(kind)
        if before is not None and before.get("status") == update.get("status") and before.get("lastTransitionTime"):
            update["lastTransitionTime"] = before["lastTransitionTime"]
        merged[kind] = update
    return list(merged.values())


def _current_entry(claim: Mapping[str, Any] | None, driver: str, status: DeviceStatus) -> Mapping[str, Any]:
    for entry in ((claim or {}).get("status") or {}).get("devices") or []:
        if (entry.get("driver"), entry.get("pool"), entry.get("device"), entry.get("shareID")) == (
            driver,
            status.pool,
            status.device,
            status.share_id,
        ):
            return entry  # type: ignore[no-any-return]
    return {}


def apply_body(  # noqa: PLR0917 (the claim's coordinates, then what to say)
    namespace: str,
    name: str,
    uid: str | None,
    driver: str,
    devices: Sequence[DeviceStatus],
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The apply configuration: only metadata that identifies the claim, and this writer's device entries."""
    entries = []
    for status in devices:
        before = _current_entry(current, driver, status).get("conditions") or []
        own_types = {str(c.get("type")) for c in status.conditions}
        kept_times = [c for c in before if str(c.get("type")) in own_types]
        entry: dict[str, Any] = {
            "driver": driver,
            "pool": status.pool,
            "device": status.device,
            "conditions": merge_conditions(kept_times, status.conditions),
        }
        if status.share_id is not None:
            entry["shareID"] = status.share_id
        if status.data is not None:
            entry["data"] = dict(status.data)
        entries.append(entry)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid:
        metadata["uid"] = uid  # a claim deleted and recreated under the same name is not written to
    return {
        "apiVersion": RESOURCE_API_VERSION,
        "kind": "ResourceClaim",
        "metadata": metadata,
        "status": {"devices": entries},
    }


def apply_device_status(
    kube: KubeApi,
    namespace: str,
    name: str,
    driver: str,
    devices: Sequence[DeviceStatus],
    *,
    uid: str | None = None,
    current: Mapping[str, Any] | None = None,
    manager: str | None = None,
) -> Mapping[str, Any] | None:
    """Apply this writer's entries; the claim as stored afterwards, or None when the server refused (logged)."""
    if not devices:
        return None
    body = apply_body(namespace, name, uid, driver, devices, current)
    try:
        return kube.apply_resource_claim_status(namespace, name, body, field_manager=manager or field_manager(driver))
    except InvalidError as e:
        if not _allocation_refused(e):
            log.warning("could not record device status", extra={"claim": f"{namespace}/{name}", "error": str(e)})
            return None
        log.info(
            "apply refused over the allocation's stored bytes; writing device status by JSON patch",
            extra={"claim": f"{namespace}/{name}"},
        )
        return _json_patch(kube, namespace, name, uid, body["status"]["devices"])
    except ApiError as e:
        log.warning("could not record device status", extra={"claim": f"{namespace}/{name}", "error": str(e)})
        return None


def _allocation_refused(error: InvalidError) -> bool:
    return any(cause.field == "status.allocation" for cause in error.causes)


def _entry_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    return (entry.get("driver"), entry.get("pool"), entry.get("device"), entry.get("shareID"))


def merged_devices(stored: Iterable[Mapping[str, Any]], ours: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`stored` status.devices with `ours` merged in: entries by key, conditions by type, data by top-level key."""
    out = [dict(entry) for entry in stored]
    for entry in ours:
        index = next((i for i, e in enumerate(out) if _entry_key(e) == _entry_key(entry)), None)
        if index is None:
            out.append(dict(entry))
            continue
        target = out[index]
        target["conditions"] = merge_conditions(target.get("conditions") or [], entry.get("conditions") or [])
        if entry.get("data") is not None:
            target["data"] = {**(target.get("data") or {}), **entry["data"]}
    return out


def _json_patch(
    kube: KubeApi, namespace: str, name: str, uid: str | None, ours: list[dict[str, Any]]
) -> Mapping[str, Any] | None:
    where = {"claim": f"{namespace}/{name}"}
    for _ in range(3):
        try:
            claim = kube.get_resource_claim(namespace, name)
        except ApiError as e:
            log.warning("could not record device status", extra={**where, "error": str(e)})
            return None
        meta = claim.get("metadata") or {}
        if uid and meta.get("uid") != uid:
            log.warning("could not record device status: the claim was replaced", extra=where)
            return None
        devices = merged_devices((claim.get("status") or {}).get("devices") or [], ours)
        operations: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
            {"op": "add", "path": "/status/devices", "value": devices},
        ]
        try:
            return kube.json_patch_resource_claim_status(namespace, name, operations)
        except ConflictError:
            continue
        except InvalidError as e:
            if _allocation_refused(e):
                log.warning(
                    "could not record device status: the server keeps this claim's opaque parameters as bytes no JSON "
                    "client can send back (whitespace inside); recreate the DeviceClass or claim from YAML",
                    extra={**where, "error": str(e)},
                )
                return None
            if not e.causes:
                continue  # the resourceVersion test failed (a bare 422): someone wrote meanwhile, read again
            log.warning("could not record device status", extra={**where, "error": str(e)})
            return None
        except ApiError as e:
            log.warning("could not record device status", extra={**where, "error": str(e)})
            return None
    log.warning("could not record device status: the claim kept changing", extra=where)
    return None
