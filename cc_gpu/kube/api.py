"""The narrow adapter through which all Kubernetes API access goes.

The plugin reads ResourceClaims, Pods, RuntimeClasses, Nodes and DeviceClasses, publishes ResourceSlices, records
device conditions in a claim's status, emits Events and publishes ConfigMaps; nothing else. `KubeApi` names exactly
those calls so the core logic depends on a Protocol, not on the `kubernetes` client: `cc_gpu.kube.client.KubernetesApi`
implements it over the official client, and tests point that same implementation at the API-server double
(`cc_gpu.kube.apiserver`).

Objects cross this boundary as plain JSON dicts in their wire form (camelCase keys, `metadata.resourceVersion`
included), so callers parse them into their own typed views and nothing depends on the client's model classes.
Every method raises the types of `cc_gpu.kube.errors` and nothing else.
"""

from __future__ import annotations

from typing import Any, Protocol

JsonObject = dict[str, Any]
"""A Kubernetes object or patch in its JSON wire form."""

RESOURCE_GROUP = "resource.k8s.io"
RESOURCE_API_VERSION = "resource.k8s.io/v1"

MERGE_PATCH = "application/merge-patch+json"
"""`patch_resource_claim_status` sends an RFC 7386 JSON merge patch: maps merge, lists are replaced whole."""

JSON_PATCH = "application/json-patch+json"
"""`patch_pod` sends an RFC 6902 JSON patch: a list of operations, `test` ones making it conditional."""


class KubeApi(Protocol):
    """Everything the driver may ask of the API server."""

    # Reads. Each raises NotFoundError when the object does not exist.
    def get_resource_claim(self, namespace: str, name: str) -> JsonObject: ...

    def get_pod(self, namespace: str, name: str) -> JsonObject: ...

    def get_runtime_class(self, name: str) -> JsonObject: ...

    def get_node(self, name: str) -> JsonObject: ...

    def get_device_class(self, name: str) -> JsonObject: ...

    # ResourceSlices: the driver's published inventory.
    def list_resource_slices(self, driver: str, node_name: str) -> list[JsonObject]:
        """The slices whose `spec.driver` and `spec.nodeName` match (server-side field selectors)."""
        ...

    def create_resource_slice(self, body: JsonObject) -> JsonObject:
        """Create a slice (`metadata.name` or `metadata.generateName`); returns the stored object."""
        ...

    def update_resource_slice(self, body: JsonObject) -> JsonObject:
        """Replace a slice; `metadata.resourceVersion` in the body makes it conditional (ConflictError when stale)."""
        ...

    def delete_resource_slice(self, name: str, *, uid: str, resource_version: str) -> None:
        """Delete a slice only if it still has this UID and resourceVersion (ConflictError otherwise)."""
        ...

    # ResourceClaim status: the per-device conditions the driver records.
    def update_resource_claim_status(self, namespace: str, name: str, body: JsonObject) -> JsonObject:
        """PUT the `status` subresource; the body carries metadata.resourceVersion for optimistic concurrency."""
        ...

    def patch_resource_claim_status(self, namespace: str, name: str, patch: JsonObject) -> JsonObject:
        """PATCH the `status` subresource with an RFC 7386 merge patch (see `MERGE_PATCH`)."""
        ...

    # Events and ConfigMaps.
    def create_event(self, namespace: str, body: JsonObject) -> JsonObject: ...

    def get_config_map(self, namespace: str, name: str) -> JsonObject: ...

    def create_config_map(self, namespace: str, body: JsonObject) -> JsonObject: ...

    def update_config_map(self, namespace: str, body: JsonObject) -> JsonObject: ...
