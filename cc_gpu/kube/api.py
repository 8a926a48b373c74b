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

from collections.abc import Iterator
from typing import Any, Protocol

JsonObject = dict[str, Any]
"""A Kubernetes object or patch in its JSON wire form."""

RESOURCE_GROUP = "resource.k8s.io"
RESOURCE_API_VERSION = "resource.k8s.io/v1"

MERGE_PATCH = "application/merge-patch+json"
"""`patch_resource_claim_status` sends an RFC 7386 JSON merge patch: maps merge, lists are replaced whole."""
JSON_PATCH = "application/json-patch+json"
"""`patch_pod` and `json_patch_resource_claim_status` send RFC 6902 operations (a list; `test` ones make it
conditional)."""
APPLY_PATCH = "application/apply-patch+yaml"
"""`apply_resource_claim_status` sends a server-side apply configuration (JSON, which is YAML)."""

class KubeApi(Protocol):
    """Everything the driver may ask of the API server."""

    # Reads. Each raises NotFoundError when the object does not exist.
    def get_resource_claim(self, namespace: str, name: str) -> JsonObject: ...

    def get_pod(self, namespace: str, name: str) -> JsonObject: ...

    def get_runtime_class(self, name: str) -> JsonObject: ...

    def get_node(self, name: str) -> JsonObject: ...

    def get_device_class(self, name: str) -> JsonObject: ...

    def list_resource_claims(self) -> list[JsonObject]:
        """Every ResourceClaim of every namespace (the verification service finds a challenge's claim this way)."""
        ...

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

    # ResourceClaims of every namespace: the binding-condition watcher (`cc_gpu.dra.binding`), only when it is on.
    def watchable_resource_claims(self, label_selector: str = "") -> tuple[list[JsonObject], str]:
        """Every claim (from the server's watch cache), or those matching `label_selector` (server-side), and the
        list's resourceVersion to watch from."""
        ...

    def watch_resource_claims(self, resource_version: str, timeout_seconds: int,
                              label_selector: str = "") -> Iterator[JsonObject]:
        """Watch events (`{"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": ...}`) after `resource_version`,
        ending after about `timeout_seconds`; ExpiredError when that version is too old (relist). With a
        `label_selector` a claim that stops matching arrives as DELETED."""
        ...

    def patch_resource_claim(self, namespace: str, name: str, operations: list[JsonObject]) -> JsonObject:
        """An RFC 6902 JSON patch of a claim's metadata (the binding-node labeler); `test` operations make it
        conditional (InvalidError when one fails)."""
        ...

    # ResourceClaim status: the per-device conditions the driver records.
    def apply_resource_claim_status(
        self, namespace: str, name: str, body: JsonObject, *, field_manager: str
    ) -> JsonObject:
        """Server-side apply to the `status` subresource as `field_manager`, forcing ownership of what it sets.

        `status.devices` is a list map keyed by (driver, device, pool, shareID) and each entry's `conditions` a
        list map keyed by type, so the server merges the applied entries and conditions into the stored ones and
        removes only what this manager set before and no longer sets: other drivers' entries, other managers'
        conditions on the same device and `status.allocation` are never written. No read-modify-write, no
        resourceVersion: the claim is never re-serialised by this client.
        """
        ...

    def json_patch_resource_claim_status(self, namespace: str, name: str, operations: list[JsonObject]) -> JsonObject:
        """PATCH the `status` subresource with RFC 6902 operations (a `test` of the resourceVersion makes it
        conditional). The server patches the stored JSON in place, keeping the key order of untouched values."""
        ...

    # Events and ConfigMaps.
    def create_event(self, namespace: str, body: JsonObject) -> JsonObject: ...

    def get_config_map(self, namespace: str, name: str) -> JsonObject: ...

    def create_config_map(self, namespace: str, body: JsonObject) -> JsonObject: ...

    def update_config_map(self, namespace: str, body: JsonObject) -> JsonObject: ...
