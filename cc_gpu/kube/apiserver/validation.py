"""What the API-server double refuses, checked the way the real server checks it.

Three layers, applied in the real server's order:

1. structure: the object must match the Kubernetes 1.37 OpenAPI schema of its kind (the strict schemas shipped by
   `kubernetes-validate`). Unknown fields are a 400 `strict decoding error` (the double always decodes as under
   `fieldValidation=Strict`), a value of the wrong JSON type is a 400 decode error, anything else a 422;
2. names: `metadata.name` in the resource's name format (DNS subdomain, DNS label or path segment);
3. semantics the schema cannot express, for the resources the driver writes: the ResourceSlice limits (128 devices,
   32 attributes and capacities per device, qualified attribute names, exactly one attribute value, semver
   versions, exactly one node selection field), a claim's `status.devices` naming only allocated devices, and
   fields that are immutable after creation.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from typing import Any

from cc_gpu.kube.apiserver.resources import ResourceType, get_path
from cc_gpu.kube.apiserver.status import ApiStatus, Cause, bad_request, invalid

KUBERNETES_VERSION = "1.37"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL_RE = re.compile(rf"^{_DNS_LABEL}$")
DNS_SUBDOMAIN_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
C_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
DEVICE_ATTRIBUTE_VALUE_TYPES = ("int", "bool", "string", "version")
MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_PER_SLICE_WITH_TAINTS = 64
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_ATTRIBUTE_STRING = 64
MAX_DRIVER_NAME = 63
MAX_IDENTIFIER = 32
MAX_DEVICE_CONDITIONS = 8
MAX_DEVICE_DATA_BYTES = 10 * 1024


def _path_text(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@functools.cache
def _schema_validator(api_version: str, kind: str) -> Any:
    """The 1.37 strict schema of one kind, from the files `kubernetes-validate` ships, compiled once.

    `kubernetes_validate.validate()` re-reads its 1.8 MB definitions file on every call (about 12 ms here), which
    made a write to the double cost more than the driver's own work; the same files and the same validator class,
    compiled once per kind, cost well under a millisecond per object.
    """
    import jsonschema  # noqa: PLC0415 (only the double validates; keep it off the driver's import path)
    from kubernetes_validate import utils as schemas  # noqa: PLC0415
    from referencing import Registry, Resource  # noqa: PLC0415

    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = schemas.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION)
    except FileNotFoundError:
        return None
    definitions = schemas.schema_contents(f"{folder}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def check_schema(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Raise the real server's 400/422 when `obj` (apiVersion and kind filled in) does not fit its schema."""
    import jsonschema  # noqa: PLC0415

    validator = _schema_validator(rt.api_version, rt.kind)
    if validator is None:
        raise bad_request(f"no schema for {rt.kind} in Kubernetes {KUBERNETES_VERSION}")
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is None:
        return
    where = _path_text(error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = re.findall(r"'([^']+)'", str(error.message).split("(")[-1])
        fields = ", ".join(f'unknown field "{where + "." if where else ""}{name}"' for name in unknown)
        raise bad_request(f"strict decoding error: {fields}")
    if error.validator == "type":
        raise bad_request(f"json: cannot decode {where or 'the object'}: {error.message}")
    name = str(get_path(obj, "metadata.name") or "")
    raise invalid(rt, name, [Cause(where, "FieldValueInvalid", f"Invalid value: {error.message}")])


TIME_FIELDS = frozenset(
    {
        "creationTimestamp",
        "deletionTimestamp",
        "lastTransitionTime",
        "lastUpdateTime",
        "lastHeartbeatTime",
        "lastProbeTime",
        "timeAdded",
        "firstTimestamp",
        "lastTimestamp",
        "startedAt",
        "finishedAt",
        "startTime",
    }
)
FREE_FORM_FIELDS = frozenset(
    {"data", "binaryData", "stringData", "annotations", "labels", "parameters", "managedFields"}
)
"""User-defined content: never reinterpreted, whatever its keys are called."""
MICRO_TIME_FIELDS = frozenset({"eventTime", "lastObservedTime", "renewTime", "acquireTime"})


def _normalized_time(where: str, value: object, micro: bool) -> str:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as e:
        raise bad_request(f'{where}: parsing time "{value}" as RFC 3339 failed') from e
    if parsed.tzinfo is None:
        raise bad_request(f'{where}: parsing time "{value}": RFC 3339 needs a time zone')
    parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def normalize_times(obj: Any, where: str = "") -> Any:
    """Timestamps as the real server stores them: UTC, `Z`, whole seconds (microseconds for MicroTime fields).

    Clients send what their libraries produce (`+00:00`, fractions); the server decodes into Go times and encodes
    them back, so an update that only re-spells a timestamp changes nothing. An unparseable time is a 400.
    """
    if isinstance(obj, dict):
        for key, value in obj.items():
            at = f"{where}.{key}" if where else key
            if key in FREE_FORM_FIELDS:
                continue
            if isinstance(value, str) and value and (key in TIME_FIELDS or key in MICRO_TIME_FIELDS):
                obj[key] = _normalized_time(at, value, key in MICRO_TIME_FIELDS)
            else:
                normalize_times(value, at)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            normalize_times(item, f"{where}[{i}]")
    return obj


def check_name(rt: ResourceType, name: str) -> list[Cause]:
    """The real server's name checks for this resource type."""
    if not name:
        return [Cause("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")]
    if rt.name_format == "segment":
        if name in (".", "..") or "/" in name or "%" in name:
            return [Cause("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": may not contain "/" or "%"')]
        return []
    limit, regex = (63, DNS_LABEL_RE) if rt.name_format == "label" else (253, DNS_SUBDOMAIN_RE)
    if len(name) > limit or not regex.match(name):
        what = "RFC 1123 label" if rt.name_format == "label" else "lowercase RFC 1123 subdomain"
        return [
            Cause(
                "metadata.name",
                "FieldValueInvalid",
                f"Invalid value: \"{name}\": a {what} must consist of lower case alphanumeric characters, '-' or "
                f"'.', and must start and end with an alphanumeric character (at most {limit} characters)",
            )
        ]
    return []


def check_immutable(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
    """A cause for each immutable field the update changes."""
    causes = []
    for dotted in rt.immutable:
        before, after = get_path(old, dotted), get_path(new, dotted)
        if before != after:
            shown = json.dumps(after, sort_keys=True)[:200]
            causes.append(Cause(dotted, "FieldValueInvalid", f"Invalid value: {shown}: field is immutable"))
    return causes


def _qualified_name_causes(where: str, key: str) -> list[Cause]:
    domain, _, identifier = key.rpartition("/")
    causes = []
    if domain and (len(domain) > MAX_DRIVER_NAME or not DNS_SUBDOMAIN_RE.match(domain)):
        causes.append(
            Cause(
                where,
                "FieldValueInvalid",
                f'Invalid value: "{domain}": a domain must be a DNS subdomain of at most 63 characters',
            )
        )
    if len(identifier) > MAX_IDENTIFIER or not C_IDENTIFIER_RE.match(identifier):
        causes.append(
            Cause(
                where,
                "FieldValueInvalid",
                f'Invalid value: "{identifier}": must be a C identifier of at most 32 characters',
            )
        )
    return causes


def _device_causes(where: str, device: dict[str, Any]) -> list[Cause]:
    causes: list[Cause] = []
    name = str(device.get("name", ""))
    if len(name) > 63 or not DNS_LABEL_RE.match(name):
        causes.append(Cause(f"{where}.name", "FieldValueInvalid", f'Invalid value: "{name}": must be a DNS label'))
    attributes = device.get("attributes") or {}
    capacity = device.get("capacity") or {}
    combined = len(attributes) + len(capacity)
    if combined > MAX_ATTRIBUTES_AND_CAPACITIES:
        causes.append(
            Cause(
                where,
                "FieldValueTooMany",
                f"Too many: {combined}: must have at most {MAX_ATTRIBUTES_AND_CAPACITIES} "
                "attributes and capacities combined",
            )
        )
    for key, value in attributes.items():
        at = f"{where}.attributes[{key}]"
        causes += _qualified_name_causes(at, key)
        set_fields = [t for t in DEVICE_ATTRIBUTE_VALUE_TYPES if isinstance(value, dict) and value.get(t) is not None]
        if len(set_fields) != 1:
            causes.append(Cause(at, "FieldValueRequired", "Required value: exactly one value must be specified"))
            continue
        kind = set_fields[0]
        if kind in ("string", "version") and len(str(value[kind])) > MAX_ATTRIBUTE_STRING:
            causes.append(
                Cause(
                    f"{at}.{kind}", "FieldValueTooLong", f"Too long: may not be more than {MAX_ATTRIBUTE_STRING} bytes"
                )
            )
        if kind == "version" and not SEMVER_RE.match(str(value[kind])):
            causes.append(
                Cause(
                    f"{at}.version",
                    "FieldValueInvalid",
                    f'Invalid value: "{value[kind]}": must be a string compatible with semver.org spec 2.0.0',
                )
            )
    for key in capacity:
        causes += _qualified_name_causes(f"{where}.capacity[{key}]", key)
    return causes


def check_resource_slice(obj: dict[str, Any]) -> list[Cause]:
    """The ResourceSlice rules of the real server that the OpenAPI schema cannot express."""
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    driver = str(spec.get("driver", ""))
    if len(driver) > MAX_DRIVER_NAME or not DNS_SUBDOMAIN_RE.match(driver):
        causes.append(
            Cause(
                "spec.driver",
                "FieldValueInvalid",
                f'Invalid value: "{driver}": must be a DNS subdomain of at most 63 characters',
            )
        )
    pool = spec.get("pool") or {}
    pool_name = str(pool.get("name", ""))
    if not pool_name or len(pool_name) > 253 or not all(DNS_SUBDOMAIN_RE.match(p) for p in pool_name.split("/")):
        causes.append(
            Cause(
                "spec.pool.name",
                "FieldValueInvalid",
                f'Invalid value: "{pool_name}": each part must be a DNS subdomain',
            )
        )
    if int(pool.get("resourceSliceCount") or 0) < 1:
        causes.append(
            Cause("spec.pool.resourceSliceCount", "FieldValueInvalid", "Invalid value: must be greater than zero")
        )
    if int(pool.get("generation") or 0) < 0:
        causes.append(
            Cause("spec.pool.generation", "FieldValueInvalid", "Invalid value: must be greater than or equal to 0")
        )
    selections = [k for k in ("nodeName", "nodeSelector") if spec.get(k)]
    selections += [k for k in ("allNodes", "perDeviceNodeSelection") if spec.get(k) is True]
    if len(selections) != 1:
        causes.append(
            Cause(
                "spec",
                "FieldValueRequired" if not selections else "FieldValueForbidden",
                "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required",
            )
        )
    devices = spec.get("devices") or []
    limited = any(d.get("taints") or d.get("consumesCounters") for d in devices if isinstance(d, dict))
    limit = MAX_DEVICES_PER_SLICE_WITH_TAINTS if limited else MAX_DEVICES_PER_SLICE
    if len(devices) > limit:
        causes.append(
            Cause("spec.devices", "FieldValueTooMany", f"Too many: {len(devices)}: must have at most {limit} items")
        )
    seen: set[str] = set()
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            continue
        causes += _device_causes(f"spec.devices[{i}]", device)
        name = str(device.get("name", ""))
        if name in seen:
            causes.append(Cause(f"spec.devices[{i}].name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        seen.add(name)
    return causes


def check_claim_status(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Cause]:
    """A ResourceClaim's status rules: allocation set once, device statuses only for allocated devices."""
    causes: list[Cause] = []
    status = new.get("status") or {}
    allocation = status.get("allocation")
    old_allocation = (old or {}).get("status", {}).get("allocation") if old else None
    if old_allocation and allocation and allocation != old_allocation:
        causes.append(Cause("status.allocation", "FieldValueInvalid", "Invalid value: field is immutable"))
    results = ((allocation or {}).get("devices") or {}).get("results") or []
    allocated = {(r.get("driver"), r.get("pool"), r.get("device")) for r in results if isinstance(r, dict)}
    seen: set[tuple[Any, ...]] = set()
    for i, entry in enumerate(status.get("devices") or []):
        if not isinstance(entry, dict):
            continue
        where = f"status.devices[{i}]"
        key = (entry.get("driver"), entry.get("pool"), entry.get("device"))
        if key not in allocated:
            shown = "/".join(str(k) for k in key)
            causes.append(
                Cause(where, "FieldValueInvalid", f'Invalid value: "{shown}": must be an allocated device in the claim')
            )
        if (*key, entry.get("shareID")) in seen:
            causes.append(Cause(where, "FieldValueDuplicate", "Duplicate value"))
        seen.add((*key, entry.get("shareID")))
        if len(entry.get("conditions") or []) > MAX_DEVICE_CONDITIONS:
            causes.append(
                Cause(
                    f"{where}.conditions",
                    "FieldValueTooMany",
                    f"Too many: must have at most {MAX_DEVICE_CONDITIONS} items",
                )
            )
        if entry.get("data") is not None and len(json.dumps(entry["data"])) > MAX_DEVICE_DATA_BYTES:
            causes.append(
                Cause(
                    f"{where}.data",
                    "FieldValueTooLong",
                    f"Too long: may not be more than {MAX_DEVICE_DATA_BYTES} bytes",
                )
            )
    uids = [r.get("uid") for r in status.get("reservedFor") or [] if isinstance(r, dict)]
    if len(uids) != len(set(uids)):
        causes.append(
            Cause("status.reservedFor", "FieldValueDuplicate", "Duplicate value: a consumer may be listed once")
        )
    return causes


def check_event(obj: dict[str, Any]) -> list[Cause]:
    """A core/v1 Event must live in the namespace of the object it is about (when that object is namespaced)."""
    involved = obj.get("involvedObject") or {}
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    if involved.get("namespace") and involved["namespace"] != namespace:
        message = f'Invalid value: "{involved["namespace"]}": does not match event.namespace'
        return [Cause("involvedObject.namespace", "FieldValueInvalid", message)]
    return []


def check_semantics(rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> list[Cause]:
    """All resource-specific checks for a create (`old` None) or an update."""
    causes = check_name(rt, str(get_path(new, "metadata.name") or ""))
    if old is not None:
        causes += check_immutable(rt, old, new)
    if rt.kind == "ResourceSlice":
        causes += check_resource_slice(new)
    elif rt.kind == "ResourceClaim":
        causes += check_claim_status(old, new)
    elif rt.kind == "Event":
        causes += check_event(new)
    return causes


def validate_object(rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Raise the real server's error reply if `new` may not be stored (over `old`, for an update)."""
    check_schema(rt, new)
    causes = check_semantics(rt, old, new)
    if causes:
        raise invalid(rt, str(get_path(new, "metadata.name") or ""), causes)


__all__ = ["ApiStatus", "validate_object"]
