"""The resource types the API-server double serves, and what the real server knows about each.

One table entry per REST resource: its URL coordinates (group, version, plural), its kind, whether it is
namespaced, whether writes to `status` go through a separate subresource, which fields the real server refuses to
change after creation, and which field-selector labels it supports (beyond `metadata.name` and
`metadata.namespace`, which every resource supports). Everything else in the double reads this table instead of
special-casing resources.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceType:
    """One REST resource, e.g. `resource.k8s.io/v1` `resourceslices`."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    immutable: tuple[str, ...] = ()
    """Dotted paths the real server refuses to change on update (422 `field is immutable`)."""
    field_labels: tuple[str, ...] = ()
    name_format: str = "subdomain"
    """`subdomain` (RFC 1123 DNS subdomain), `label` (RFC 1123 DNS label) or `segment` (any path segment)."""
    returns_deleted: bool = False
    """DELETE answers with the deleted object (the registry's `ReturnDeletedObject`), else with a `Status`."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name the real server uses in messages: `resourceslices.resource.k8s.io`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_generation(self) -> bool:
        """Whether `metadata.generation` is maintained (it counts changes to the spec)."""
        return self.kind not in ("Event", "ConfigMap", "Namespace", "Node", "ResourceClaim", "ResourceClaimTemplate")


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=True, name_format="label"),
    ResourceType(
        "", "v1", "nodes", "Node", namespaced=False, status_subresource=True, field_labels=("spec.unschedulable",)
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        namespaced=True,
        status_subresource=True,
        returns_deleted=True,
        immutable=("spec.runtimeClassName", "spec.resourceClaims", "spec.nodeName"),
        field_labels=(
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
    ),
    ResourceType(
        "",
        "v1",
        "events",
        "Event",
        namespaced=True,
        field_labels=(
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ),
        name_format="segment",
    ),
    ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True),
    ResourceType("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", namespaced=False, immutable=("handler",)),
    ResourceType(
        "resource.k8s.io",
        "v1",
        "resourceslices",
        "ResourceSlice",
        namespaced=False,
        immutable=("spec.driver", "spec.pool.name", "spec.nodeName"),
        field_labels=("spec.driver", "spec.nodeName"),
        returns_deleted=True,
    ),
    ResourceType(
        "resource.k8s.io",
        "v1",
        "resourceclaims",
        "ResourceClaim",
        namespaced=True,
        status_subresource=True,
        immutable=("spec",),
        returns_deleted=True,
    ),
    ResourceType(
        "resource.k8s.io",
        "v1",
        "resourceclaimtemplates",
        "ResourceClaimTemplate",
        namespaced=True,
        immutable=("spec",),
        returns_deleted=True,
    ),
    ResourceType("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", namespaced=False, returns_deleted=True),
)

_BY_PATH = {(rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES}
_BY_KIND = {(rt.api_version, rt.kind): rt for rt in RESOURCE_TYPES}


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource served at `/apis/<group>/<version>/<plural>` (group "" for `/api/v1`), if the double serves it."""
    return _BY_PATH.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    """The resource for an object's `apiVersion` and `kind`, if the double serves it."""
    return _BY_KIND.get((api_version, kind))


def get_path(obj: object, dotted: str) -> object:
    """The value at a dotted path of a JSON object, or None where any step is missing."""
    current = obj
    for part in dotted.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current
