"""Objects a real cluster would hold, built as wire-form dicts, and the scheduler's part played on the double.

No kube-scheduler runs beside the double, so tests and the demo play it: they create Nodes, RuntimeClasses, Pods,
DeviceClasses and ResourceClaims with these builders, then `allocate` a claim (set `status.allocation` and
`status.reservedFor` through the status subresource, as the scheduler does). The builders produce only what the
1.37 schemas accept; anything more specific a test needs it can add to the returned dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cc_gpu.kube.apiserver.resources import by_kind
from cc_gpu.kube.apiserver.store import Store

JsonObject = dict[str, Any]


def node(name: str, labels: dict[str, str] | None = None) -> JsonObject:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": dict(labels or {})}}


def runtime_class(name: str, handler: str) -> JsonObject:
    return {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name}, "handler": handler}


def pod(
    namespace: str, name: str, *, node_name: str, runtime_class_name: str | None, claims: Sequence[str] = ()
) -> JsonObject:
    spec: JsonObject = {
        "nodeName": node_name,
        "containers": [{"name": "main", "image": "registry.example/workload:1"}],
        "resourceClaims": [{"name": f"claim-{i}", "resourceClaimName": c} for i, c in enumerate(claims)],
    }
    if runtime_class_name is not None:
        spec["runtimeClassName"] = runtime_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def device_class(name: str, driver: str, parameters: JsonObject | None = None) -> JsonObject:
    spec: JsonObject = {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]}
    if parameters is not None:
        spec["config"] = [{"opaque": {"driver": driver, "parameters": parameters}}]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": name}, "spec": spec}


def resource_claim(
    namespace: str,
    name: str,
    *,
    device_class_name: str,
    requests: Sequence[str] = ("gpu",),
    config: Sequence[JsonObject] = (),
) -> JsonObject:
    """A claim with one device per named request; `config` entries go to `spec.devices.config` as given."""
    devices: JsonObject = {
        "requests": [{"name": r, "exactly": {"deviceClassName": device_class_name}} for r in requests]
    }
    if config:
        devices["config"] = list(config)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": devices},
    }


@dataclass(frozen=True)
class Allocated:
    """One device the scheduler picked for a request."""

    request: str
    driver: str
    pool: str
    device: str
    admin_access: bool = False


def allocation_status(
    results: Iterable[Allocated],
    reserved_for: Iterable[JsonObject],
    *,
    node_name: str,
    config: Sequence[JsonObject] = (),
) -> JsonObject:
    """The `status` the scheduler writes: the allocation pinned to a node, and the pods that use the claim."""
    entries = []
    for r in results:
        entry: JsonObject = {"request": r.request, "driver": r.driver, "pool": r.pool, "device": r.device}
        if r.admin_access:
            entry["adminAccess"] = True
        entries.append(entry)
    node_selector = {
        "nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node_name]}]},
        ]
    }
    devices: JsonObject = {"results": entries}
    if config:
        devices["config"] = list(config)
    return {
        "allocation": {"devices": devices, "nodeSelector": node_selector},
        "reservedFor": [
            {"resource": "pods", "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]} for p in reserved_for
        ],
    }


def allocate(
    store: Store,
    claim: JsonObject,
    results: Iterable[Allocated],
    pods: Iterable[JsonObject],
    *,
    node_name: str,
    config: Sequence[JsonObject] = (),
) -> JsonObject:
    """Play the scheduler: write the claim's allocation and consumers through the status subresource."""
    rt = by_kind("resource.k8s.io/v1", "ResourceClaim")
    assert rt is not None
    meta = claim["metadata"]
    body = dict(claim)
    body["status"] = allocation_status(results, pods, node_name=node_name, config=config)
    return store.replace(rt, meta["namespace"], meta["name"], body, subresource="status")
