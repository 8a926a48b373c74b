"""Server-side apply (`application/apply-patch+yaml`) where the driver uses it: a ResourceClaim's `status.devices`.

The real server tracks, per field manager, the set of fields each manager last applied (`metadata.managedFields`),
merges an applied configuration into the live object along the schema's list-map keys, and removes the fields a
manager stops applying unless another manager still owns them. In the 1.37 types `status.devices` is a list map keyed
by `driver`, `device`, `pool` and `shareID`, and each entry's `conditions` a list map keyed by `type`; neither has a
strategic-merge key, so apply is the one write that lets several writers (the plugin, an attestation service, the
binding-condition code) each own their conditions on one device entry without erasing the others.

The double models exactly that subset: apply to `resourceclaims/<name>/status` whose status names only `devices`.
Ownership is kept at the granularity the driver can observe: a device entry, a condition (by type), and every field
of an entry's other members down to their leaves (`data` is a RawExtension, which the server's schema makes a free-form
map merged key by key; `networkData` a struct; lists inside them are atomic). Anything else sent with the apply
media type is refused with a 415 saying so, rather than answered differently from the real server.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from cc_gpu.kube.apiserver.resources import ResourceType
from cc_gpu.kube.apiserver.status import ApiStatus, Cause, bad_request, conflict, invalid

APPLY = "application/apply-patch+yaml"
DEVICE_KEYS = ("driver", "device", "pool", "shareID")
STATUS = "status"
MAX_FIELD_MANAGER = 128

JsonObject = dict[str, Any]
DeviceKey = tuple[str, str, str, str | None]
Path = tuple[Any, ...]  # ("dev", key) | ("cond", key, type) | ("field", key, (name, *nested keys))


def is_apply(content_type: str) -> bool:
    return content_type.split(";", maxsplit=1)[0].strip().lower() == APPLY


def not_modelled(what: str) -> ApiStatus:
    return ApiStatus(
        415,
        "UnsupportedMediaType",
        f"the API-server double models server-side apply only for resourceclaims/status (status.devices): {what}",
    )


def check_options(manager: str, force: str) -> None:
    """The real server's PatchOptions checks for an apply request (422 on `PatchOptions.meta.k8s.io`)."""
    causes = []
    if not manager:
        causes.append(Cause("fieldManager", "FieldValueRequired", "Required value: is required for apply patch"))
    elif len(manager) > MAX_FIELD_MANAGER or not manager.isprintable():
        causes.append(
            Cause("fieldManager", "FieldValueInvalid", "Invalid value: must be at most 128 printable characters")
        )
    if force not in ("", "true", "false"):
        raise bad_request(f'force: invalid boolean value "{force}"')
    if causes:
        summary = "; ".join(f"{c.field}: {c.message}" for c in causes)
        details = {"group": "meta.k8s.io", "kind": "PatchOptions"}
        raise ApiStatus(422, "Invalid", f'PatchOptions.meta.k8s.io "" is invalid: {summary}', details, tuple(causes))


def _key_of(entry: Any, where: str) -> DeviceKey:
    if not isinstance(entry, dict):
        raise bad_request(f"{where}: expected an object")
    if not any(isinstance(entry.get(key), str) for key in DEVICE_KEYS):
        # A missing key field is only left out of the key (validation then names it); all of them missing is not.
        raise bad_request(f"{where}: associative list with keys has an element that omits all key fields")
    share = entry.get("shareID")
    return (
        str(entry.get("driver", "")),
        str(entry.get("device", "")),
        str(entry.get("pool", "")),
        share if isinstance(share, str) else None,
    )


def _key_json(key: DeviceKey) -> str:
    fields = {"device": key[1], "driver": key[0], "pool": key[2]}
    if key[3] is not None:
        fields["shareID"] = key[3]
    return "k:" + json.dumps(fields, sort_keys=True, separators=(",", ":"))


def merge_order(live: list[Any], applied: list[Any]) -> list[Any]:
    """The order of a merged list map, as structured-merge-diff interleaves the live and the applied items.

    Applied items keep their relative order; live items that are not applied stay where they were among them.
    """
    applied_set, live_set = set(applied), set(live)
    shared = [k for k in applied if k in live_set]
    out: list[Any] = []
    merged: set[Any] = set()
    next_shared = shared.pop(0) if shared else None
    li = ri = 0
    while li < len(live) or ri < len(applied):
        if li < len(live) and ri < len(applied):
            key = live[li]
            if key == applied[ri]:
                merged.add(key)
                out.append(key)
                li += 1
                ri += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if key in applied_set and next_shared is not None and next_shared != key:
                li += 1
                continue
        if li < len(live):
            key = live[li]
            if key not in applied_set:
                out.append(key)
                li += 1
                continue
            if key in merged:
                li += 1
        if ri < len(applied):
            key = applied[ri]
            merged.add(key)
            out.append(key)
            ri += 1
            if next_shared is not None and next_shared == key:
                next_shared = shared.pop(0) if shared else None
    return out


def _paths_of(devices: list[Any]) -> tuple[set[Path], dict[DeviceKey, JsonObject]]:
    """The fields an applied `status.devices` list sets, and its entries by key (duplicates are an error)."""
    paths: set[Path] = set()
    entries: dict[DeviceKey, JsonObject] = {}
    for i, entry in enumerate(devices):
        key = _key_of(entry, f".status.devices[{i}]")
        if key in entries:
            raise ApiStatus(500, "InternalError", f".status.devices: duplicate entries for key {_key_json(key)[2:]}")
        entries[key] = entry
        paths.add(("dev", key))
        types: set[str] = set()
        for j, condition in enumerate(entry.get("conditions") or []):
            if not isinstance(condition, dict) or not isinstance(condition.get("type"), str):
                raise ApiStatus(
                    500,
                    "InternalError",
                    f".status.devices[{i}].conditions[{j}]: associative list with keys has an element that omits "
                    'key field "type"',
                )
            if condition["type"] in types:
                raise ApiStatus(
                    500,
                    "InternalError",
                    f'.status.devices[{i}].conditions: duplicate entries for key [type="{condition["type"]}"]',
                )
            types.add(condition["type"])
            paths.add(("cond", key, condition["type"]))
        for name, value in entry.items():
            if name not in DEVICE_KEYS and name != "conditions":
                paths.update(("field", key, sub) for sub in _nested((name,), value))
    return paths, entries


def _nested(prefix: tuple[str, ...], value: Any) -> list[tuple[str, ...]]:
    """A member's path and, for a map, every path beneath it (a map is merged key by key, anything else is a leaf)."""
    out = [prefix]
    if isinstance(value, dict):
        for name, child in value.items():
            out += _nested((*prefix, str(name)), child)
    return out


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _deep_merge(live: Any, applied: Any) -> Any:
    if isinstance(live, dict) and isinstance(applied, dict):
        merged = dict(live)
        for name, child in applied.items():
            merged[name] = _deep_merge(live.get(name), child)
        return merged
    return copy.deepcopy(applied)


def _fields_v1(paths: set[Path], entries: dict[DeviceKey, JsonObject]) -> JsonObject:
    devices: JsonObject = {}
    for path in sorted(paths, key=repr):
        key = path[1]
        node = devices.setdefault(
            _key_json(key), {".": {}, **{f"f:{k}": {} for k in DEVICE_KEYS if k != "shareID" or key[3]}}
        )
        if path[0] == "cond":
            condition = next(c for c in entries[key].get("conditions") or [] if c.get("type") == path[2])
            node.setdefault("f:conditions", {})[f'k:{{"type":{json.dumps(path[2])}}}'] = {
                ".": {},
                **{f"f:{name}": {} for name in sorted(condition)},
            }
        elif path[0] == "field":
            for name in path[2]:
                node = node.setdefault(f"f:{name}", {})
    return {"f:status": {"f:devices": devices}} if devices else {}


def _parse_fields_v1(fields: Any) -> set[Path]:
    paths: set[Path] = set()
    devices = ((fields or {}).get("f:status") or {}).get("f:devices") or {}
    for raw_key, node in devices.items():
        if not raw_key.startswith("k:"):
            continue
        decoded = json.loads(raw_key[2:])
        key = (decoded.get("driver"), decoded.get("device"), decoded.get("pool"), decoded.get("shareID"))
        paths.add(("dev", key))
        for name, child in node.items():
            if name == "f:conditions":
                paths.update(("cond", key, json.loads(k[2:])["type"]) for k in child if k.startswith("k:"))
            elif name.startswith("f:") and name[2:] not in DEVICE_KEYS:
                paths.update(("field", key, sub) for sub in _parse_nested((name[2:],), child))
    return paths


def _parse_nested(prefix: tuple[str, ...], node: Any) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, child in (node or {}).items():
        if name.startswith("f:"):
            out += _parse_nested((*prefix, name[2:]), child)
    return out


def _ownership(obj: JsonObject) -> dict[str, set[Path]]:
    owners: dict[str, set[Path]] = {}
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if entry.get("operation") == "Apply" and entry.get("subresource") == STATUS:
            owners[str(entry.get("manager"))] = _parse_fields_v1(entry.get("fieldsV1"))
    return owners


def _value(devices: dict[DeviceKey, JsonObject], path: Path) -> Any:
    entry = devices.get(path[1])
    if entry is None:
        return None
    if path[0] == "cond":
        return next((c for c in entry.get("conditions") or [] if c.get("type") == path[2]), None)
    if path[0] == "field":
        return _at(entry, path[2])
    return True


def _conflicting_fields(
    path: Path, live: dict[DeviceKey, JsonObject], applied: dict[DeviceKey, JsonObject]
) -> list[str]:
    """The leaf fields of a clash, as the server names them in a conflict's causes."""
    before, after = _value(live, path), _value(applied, path)
    if path[0] == "cond" and isinstance(before, dict) and isinstance(after, dict):
        names = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return [f"{_describe(path)}.{k}" for k in names]
    return [_describe(path)]


def _describe(path: Path) -> str:
    driver, device, pool, share = path[1]
    where = f'.status.devices[device="{device}",driver="{driver}",pool="{pool}"' + (
        f',shareID="{share}"]' if share else "]"
    )
    if path[0] == "cond":
        return f'{where}.conditions[type="{path[2]}"]'
    return f"{where}.{'.'.join(path[2])}" if path[0] == "field" else where


def apply_claim_status(  # noqa: PLR0917 (the request's parts, one by one)
    rt: ResourceType, current: JsonObject, config: Any, manager: str, force: bool, now: str
) -> JsonObject:
    """The claim after `manager` applied `config` to its status; raises the real server's 409 on a conflict."""
    name = current["metadata"]["name"]
    if not isinstance(config, dict):
        raise bad_request("the apply configuration must be an object")
    for field, expected in (("apiVersion", rt.api_version), ("kind", rt.kind)):
        if config.get(field) != expected:
            raise bad_request(f"{field} must be {expected!r} in an apply configuration (got {config.get(field)!r})")
    unknown = sorted(set(config) - {"apiVersion", "kind", "metadata", "status"})
    meta = config.get("metadata") or {}
    if unknown or not isinstance(meta, dict) or set(meta) - {"name", "namespace", "resourceVersion", "uid"}:
        raise not_modelled(f"fields {unknown or sorted(set(meta) - {'name', 'namespace', 'resourceVersion', 'uid'})}")
    if meta.get("name") != name:
        raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
    status = config.get("status") or {}
    if not isinstance(status, dict) or set(status) - {"devices"}:
        raise not_modelled(f"status fields {sorted(set(status) - {'devices'}) if isinstance(status, dict) else status}")
    if meta.get("uid") and meta["uid"] != current["metadata"]["uid"]:
        why = f'Invalid value: "{meta["uid"]}": field is immutable'
        raise invalid(rt, name, [Cause("metadata.uid", "FieldValueInvalid", why)])
    if meta.get("resourceVersion") and meta["resourceVersion"] != current["metadata"]["resourceVersion"]:
        raise conflict(
            rt, name, "the object has been modified; please apply your changes to the latest version and try again"
        )
    applied, applied_entries = _paths_of(list(status.get("devices") or []))

    result = copy.deepcopy(current)
    live = {_key_of(d, "status.devices"): d for d in (result.get("status") or {}).get("devices") or []}
    owners = _ownership(result)
    owners = {m: {p for p in paths if _value(live, p) is not None} for m, paths in owners.items()}  # gone fields
    previous = owners.pop(manager, set())

    clashes = sorted(
        (
            (other, p)
            for other, paths in owners.items()
            for p in paths & applied
            if p[0] != "dev"
            and not (p[0] == "field" and isinstance(_value(applied_entries, p), dict))  # maps merge, leaves clash
            and _value(live, p) != _value(applied_entries, p)
        ),
        key=repr,
    )
    if clashes and not force:
        fields = sorted(
            (other, field) for other, p in clashes for field in _conflicting_fields(p, live, applied_entries)
        )
        listed = "\n".join(f'- conflict with "{other}" with subresource "status": {field}' for other, field in fields)
        causes = tuple(
            Cause(field, "FieldManagerConflict", f'conflict with "{other}" with subresource "status"')
            for other, field in fields
        )
        raise ApiStatus(
            409,
            "Conflict",
            f"Apply failed with {len(fields)} conflict{'s' if len(fields) > 1 else ''}: {listed}",
            {"name": name, "group": rt.group, "kind": rt.plural},
            causes,
        )
    for other, p in clashes:
        owners[other].discard(p)

    live_devices = list((result.get("status") or {}).get("devices") or [])
    by_key = {_key_of(d, "status.devices"): d for d in live_devices}
    for key, entry in applied_entries.items():
        target = by_key.setdefault(key, {k: entry[k] for k in DEVICE_KEYS if k in entry})
        current = {str(c.get("type")): c for c in target.get("conditions") or []}
        wanted = {c["type"]: copy.deepcopy(c) for c in entry.get("conditions") or []}
        order = merge_order(list(current), list(wanted))
        conditions = [wanted.get(kind) or current[kind] for kind in order]
        if conditions or "conditions" in target:
            target["conditions"] = conditions
        for field, value in entry.items():
            if field not in DEVICE_KEYS and field != "conditions":
                target[field] = _deep_merge(target.get(field), value)
    order = merge_order([_key_of(d, "status.devices") for d in live_devices], list(applied_entries))
    devices = [by_key[key] for key in order]

    still_owned = set().union(*owners.values()) if owners else set()

    def depth(p: Path) -> tuple[int, int]:
        return ("dev", "field", "cond").index(p[0]), len(p[2]) if p[0] == "field" else 0

    for path in sorted(previous - applied, key=depth, reverse=True):
        if path in still_owned or path[1] not in by_key:
            continue
        target = by_key[path[1]]
        if path[0] == "cond":
            target["conditions"] = [c for c in target.get("conditions") or [] if c.get("type") != path[2]]
        elif path[0] == "field":
            parent = _at(target, path[2][:-1])
            if isinstance(parent, dict):
                parent.pop(path[2][-1], None)
        else:
            devices = [d for d in devices if d is not target]
            del by_key[path[1]]

    status_out = dict(result.get("status") or {})
    if devices:
        status_out["devices"] = devices
    else:
        status_out.pop("devices", None)
    result["status"] = status_out

    owners[manager] = applied
    managed = [
        e
        for e in (result["metadata"].get("managedFields") or [])
        if not (e.get("operation") == "Apply" and e.get("subresource") == STATUS)
    ]
    for who, paths in sorted(owners.items()):
        if not paths:
            continue
        values = {**live, **applied_entries} if who == manager else live
        managed.append(
            {
                "manager": who,
                "operation": "Apply",
                "apiVersion": rt.api_version,
                "time": now if who == manager else _time_of(current, who),
                "fieldsType": "FieldsV1",
                "fieldsV1": _fields_v1(paths, {k: v for k, v in values.items() if k in {p[1] for p in paths}}),
                "subresource": STATUS,
            }
        )
    result["metadata"]["managedFields"] = managed
    return result


def _time_of(obj: JsonObject, manager: str) -> str:
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            return str(entry.get("time", ""))
    return ""
