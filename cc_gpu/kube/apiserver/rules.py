"""The rules of the real API server for the objects the driver writes, beyond what their OpenAPI schemas say.

The schemas give structure and types; the server's Go validation adds limits and formats. These are the ones the
driver can break or depends on: the ResourceSlice limits (device count, attributes and capacities per device,
qualified names, one typed value per attribute, semver versions, one node-selection field), a claim's requests and
opaque config, its status (device statuses only for allocated devices, conditions and data limits, an allocation
set once), and an Event's namespace. Each function returns the `Cause`s the real server would list.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cc_gpu.kube.apiserver.status import Cause

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


MAX_OPAQUE_PARAMETERS_BYTES = 10 * 1024


def opaque_causes(where: str, configs: Any, request_names: set[str] | None) -> list[Cause]:
    """`config[i].opaque`: a valid driver name, parameters a JSON object of at most 10 KiB, known request names."""
    causes: list[Cause] = []
    for i, entry in enumerate(configs or []):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict):
            continue
        opaque = entry.get("opaque")
        if not isinstance(opaque, dict):
            causes.append(Cause(f"{at}.opaque", "FieldValueRequired", "Required value"))
            continue
        driver = str(opaque.get("driver", ""))
        if len(driver) > MAX_DRIVER_NAME or not DNS_SUBDOMAIN_RE.match(driver):
            message = f'Invalid value: "{driver}": must be a DNS subdomain of at most 63 characters'
            causes.append(Cause(f"{at}.opaque.driver", "FieldValueInvalid", message))
        parameters = opaque.get("parameters")
        if not isinstance(parameters, dict):
            causes.append(Cause(f"{at}.opaque.parameters", "FieldValueInvalid", "Invalid value: must be a JSON object"))
        elif len(json.dumps(parameters, separators=(",", ":"))) > MAX_OPAQUE_PARAMETERS_BYTES:
            message = f"Too long: may not be more than {MAX_OPAQUE_PARAMETERS_BYTES} bytes"
            causes.append(Cause(f"{at}.opaque.parameters", "FieldValueTooLong", message))
        for j, name in enumerate(entry.get("requests") or []):
            if request_names is not None and str(name).split("/")[0] not in request_names:
                message = f'Invalid value: "{name}": must be the name of a request in the claim'
                causes.append(Cause(f"{at}.requests[{j}]", "FieldValueInvalid", message))
    return causes


def check_claim_spec(spec: Any, where: str = "spec") -> list[Cause]:
    """A ResourceClaim's (or template's) device requests and their config."""
    devices = (spec or {}).get("devices") or {}
    causes: list[Cause] = []
    names: set[str] = set()
    for i, request in enumerate(devices.get("requests") or []):
        at = f"{where}.devices.requests[{i}]"
        if not isinstance(request, dict):
            continue
        name = str(request.get("name", ""))
        if len(name) > 63 or not DNS_LABEL_RE.match(name):
            causes.append(Cause(f"{at}.name", "FieldValueInvalid", f'Invalid value: "{name}": must be a DNS label'))
        elif name in names:
            causes.append(Cause(f"{at}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        names.add(name)
        chosen = [k for k in ("exactly", "firstAvailable") if request.get(k)]
        if len(chosen) != 1:
            message = "exactly one of `exactly` or `firstAvailable` is required"
            causes.append(Cause(at, "FieldValueRequired" if not chosen else "FieldValueForbidden", message))
            continue
        exact = request.get("exactly")
        if isinstance(exact, dict):
            class_name = str(exact.get("deviceClassName", ""))
            if not class_name or not DNS_SUBDOMAIN_RE.match(class_name):
                message = f'Invalid value: "{class_name}": must be a DNS subdomain'
                causes.append(Cause(f"{at}.exactly.deviceClassName", "FieldValueInvalid", message))
            mode = exact.get("allocationMode", "ExactCount")
            if mode not in ("ExactCount", "All"):
                message = f'Unsupported value: "{mode}": supported values: "All", "ExactCount"'
                causes.append(Cause(f"{at}.exactly.allocationMode", "FieldValueNotSupported", message))
            count = exact.get("count")
            if count is not None and (mode != "ExactCount" or int(count) < 1):
                message = f"Invalid value: {count}: must be greater than zero, and only with allocationMode ExactCount"
                causes.append(Cause(f"{at}.exactly.count", "FieldValueInvalid", message))
    causes += opaque_causes(f"{where}.devices.config", devices.get("config"), names)
    return causes


def check_claim_status(old: dict[str, Any] | None, new: dict[str, Any]) -> list[Cause]:
    """A ResourceClaim's status rules: allocation set once, device statuses only for allocated devices."""
    causes: list[Cause] = []
    status = new.get("status") or {}
    allocation = status.get("allocation")
    old_allocation = (old or {}).get("status", {}).get("allocation") if old else None
    if old_allocation and allocation and allocation != old_allocation:
        causes.append(
            Cause("status.allocation", "FieldValueInvalid", "Invalid value: null: field cannot be modified once set")
        )
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
        causes += condition_causes(f"{where}.conditions", entry.get("conditions"))
        if entry.get("data") is not None and not isinstance(entry["data"], dict):
            causes.append(Cause(f"{where}.data", "FieldValueInvalid", "Invalid value: must be a valid JSON object"))
        elif entry.get("data") is not None and len(_compact(entry["data"])) > MAX_DEVICE_DATA_BYTES:
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


CONDITION_REASON_RE = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
CONDITION_STATUSES = ("False", "True", "Unknown")
MAX_CONDITION_REASON = 1024
MAX_CONDITION_MESSAGE = 32 * 1024
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _label_name_causes(where: str, value: str) -> list[Cause]:
    """metav1 `ValidateLabelName`: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters."""
    prefix, slash, name = value.rpartition("/")
    bad = (slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN_RE.match(prefix))) or (
        not name or len(name) > 63 or not _LABEL_NAME_RE.match(name)
    )
    if not bad:
        return []
    message = (
        f"Invalid value: \"{value}\": name part must consist of alphanumeric characters, '-', '_' or '.', "
        "and must start and end with an alphanumeric character"
    )
    return [Cause(where, "FieldValueInvalid", message)]


def condition_causes(where: str, conditions: Any) -> list[Cause]:
    """metav1 `ValidateConditions`, as the real server applies it to `status.devices[].conditions`."""
    causes: list[Cause] = []
    seen: set[str] = set()
    for i, condition in enumerate(conditions or []):
        at = f"{where}[{i}]"
        if not isinstance(condition, dict):
            continue
        kind = str(condition.get("type") or "")
        if kind in seen:
            causes.append(Cause(at, "FieldValueDuplicate", f'Duplicate value: "{kind}"'))
        seen.add(kind)
        if not kind:
            causes.append(Cause(f"{at}.type", "FieldValueRequired", "Required value: is required"))
        else:
            causes += _label_name_causes(f"{at}.type", kind)
        status = str(condition.get("status") or "")
        if not status:
            causes.append(Cause(f"{at}.status", "FieldValueRequired", "Required value"))
        elif status not in CONDITION_STATUSES:
            supported = ", ".join(f'"{s}"' for s in CONDITION_STATUSES)
            causes.append(
                Cause(
                    f"{at}.status",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{status}": supported values: {supported}',
                )
            )
        if int(condition.get("observedGeneration") or 0) < 0:
            causes.append(
                Cause(
                    f"{at}.observedGeneration",
                    "FieldValueInvalid",
                    "Invalid value: must be greater than or equal to zero",
                )
            )
        if not condition.get("lastTransitionTime"):
            causes.append(Cause(f"{at}.lastTransitionTime", "FieldValueRequired", "Required value"))
        reason = str(condition.get("reason") or "")
        if not reason:
            causes.append(Cause(f"{at}.reason", "FieldValueRequired", "Required value"))
        else:
            if not CONDITION_REASON_RE.match(reason):
                causes.append(
                    Cause(
                        f"{at}.reason",
                        "FieldValueInvalid",
                        f'Invalid value: "{reason}": a condition reason must start with alphabetic '
                        "character, optionally followed by a string of alphanumeric characters or '_,:', "
                        "and must end with an alphanumeric character or '_'",
                    )
                )
            if len(reason) > MAX_CONDITION_REASON:
                causes.append(
                    Cause(
                        f"{at}.reason",
                        "FieldValueTooLong",
                        f"Too long: may not be more than {MAX_CONDITION_REASON} bytes",
                    )
                )
        if len(str(condition.get("message") or "")) > MAX_CONDITION_MESSAGE:
            causes.append(
                Cause(
                    f"{at}.message",
                    "FieldValueTooLong",
                    f"Too long: may not be more than {MAX_CONDITION_MESSAGE} bytes",
                )
            )
    return causes


def _compact(value: Any) -> str:
    """JSON as Go encodes it (no spaces): what the real server counts a RawExtension's length in."""
    return json.dumps(value, separators=(",", ":"))


def check_event(obj: dict[str, Any]) -> list[Cause]:
    """A core/v1 Event must live in the namespace of the object it is about (when that object is namespaced)."""
    involved = obj.get("involvedObject") or {}
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    if involved.get("namespace") and involved["namespace"] != namespace:
        message = f'Invalid value: "{involved["namespace"]}": does not match event.namespace'
        return [Cause("involvedObject.namespace", "FieldValueInvalid", message)]
    return []
