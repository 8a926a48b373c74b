"""What the API-server double refuses, checked the way the real server checks it.

Three layers, applied in the real server's order:

1. structure: the object must match the Kubernetes 1.37 OpenAPI schema of its kind (the strict schemas shipped by
   `kubernetes-validate`). Unknown fields are a 400 `strict decoding error` (the double always decodes as under
   `fieldValidation=Strict`), a value of the wrong JSON type is a 400 decode error, anything else a 422;
2. names: `metadata.name` in the resource's name format (DNS subdomain, DNS label or path segment);
3. fields that are immutable after creation, and the semantics the schema cannot express for the resources the
   driver writes (`cc_gpu.kube.apiserver.rules`).

Timestamps are normalised first, as the real server's decode and re-encode does.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from typing import Any

from cc_gpu.kube.apiserver.resources import ResourceType, get_path
from cc_gpu.kube.apiserver.rules import (
    DNS_LABEL_RE,
    DNS_SUBDOMAIN_RE,
    check_claim_spec,
    check_claim_status,
    check_event,
    check_resource_slice,
    opaque_causes,
)
from cc_gpu.kube.apiserver.status import Cause, bad_request, invalid

KUBERNETES_VERSION = "1.37"


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


def _raw_extension(path: Any) -> bool:
    """A RawExtension (opaque parameters, device-status data) decodes from any JSON; validation judges it (422)."""
    parts = list(path)
    return bool(parts) and parts[-1] in ("parameters", "data") and "devices" in parts


def check_schema(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Raise the real server's 400/422 when `obj` (apiVersion and kind filled in) does not fit its schema."""
    import jsonschema  # noqa: PLC0415

    validator = _schema_validator(rt.api_version, rt.kind)
    if validator is None:
        raise bad_request(f"no schema for {rt.kind} in Kubernetes {KUBERNETES_VERSION}")
    errors = [e for e in validator.iter_errors(obj) if not _raw_extension(e.absolute_path)]
    error = jsonschema.exceptions.best_match(errors)
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
    if error.validator == "required":  # named as the server names it: the missing field itself
        missing = re.findall(r"'([^']+)' is a required property", str(error.message))
        field = f"{where}.{missing[0]}" if where and missing else (missing[0] if missing else where)
        raise invalid(rt, name, [Cause(field, "FieldValueRequired", "Required value")])
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


def check_semantics(rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> list[Cause]:
    """All resource-specific checks for a create (`old` None) or an update."""
    causes = check_name(rt, str(get_path(new, "metadata.name") or ""))
    if old is not None:
        causes += check_immutable(rt, old, new)
    if rt.kind == "ResourceSlice":
        causes += check_resource_slice(new)
    elif rt.kind == "ResourceClaim":
        causes += check_claim_spec(new.get("spec"))
        causes += check_claim_status(old, new)
    elif rt.kind == "ResourceClaimTemplate":
        causes += check_claim_spec((new.get("spec") or {}).get("spec"), "spec.spec")
    elif rt.kind == "DeviceClass":
        causes += opaque_causes("spec.config", (new.get("spec") or {}).get("config"), None)
    elif rt.kind == "Event":
        causes += check_event(new)
    return causes


def validate_object(rt: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Raise the real server's error reply if `new` may not be stored (over `old`, for an update)."""
    check_schema(rt, new)
    causes = check_semantics(rt, old, new)
    if causes:
        raise invalid(rt, str(get_path(new, "metadata.name") or ""), causes)
