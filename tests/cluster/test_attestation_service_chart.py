"""The chart's verification service on the real API server: installed with its own account, which can do what the
service needs (read claims, write this driver's status.devices from any node, create Events) and nothing more, as
the server's own RBAC and DRA status authorization decide (SubjectAccessReviews and real writes)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from .chart import installed, stored, upgrade
from .controlplane import ControlPlane, Rest

pytestmark = pytest.mark.cluster

RELEASE, NAMESPACE, DRIVER = "attsvc", "cc-gpu-attsvc", "gpu.attsvc.cc-gpu.io"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:attsvc-cc-gpu-attestation"
VALUES = {
    "driverName": DRIVER,
    "deviceClasses": {"vfio": {"name": "vfio.attsvc.cc-gpu.io"}, "attested": {"name": "attested.attsvc.cc-gpu.io"}},
    "attestation": {"keys": {"namespace": "cc-gpu-attsvc-keys"}},
    "attestationService": {"enabled": True, "tokenKey": {"secretName": "attsvc-token-key", "kid": "attsvc-1"}},
}
TENANT = "attsvc-tenant"
CLAIMS = f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaims"


@pytest.fixture(scope="module")
def release(control_plane: ControlPlane) -> Iterator[list[dict[str, Any]]]:
    with installed(control_plane, release=RELEASE, namespace=NAMESPACE, values=VALUES) as objects:
        yield objects


@pytest.fixture(scope="module")
def service(control_plane: ControlPlane, release: list[dict[str, Any]]) -> Rest:
    """The service's account with a plain token (not bound to a pod on any node: only `arbitrary-node` verbs)."""
    reply = control_plane.admin.create(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/attsvc-cc-gpu-attestation/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    return control_plane.as_token(reply["status"]["token"])


def allowed(plane: ControlPlane, verb: str, resource: str, *, group: str = "resource.k8s.io", sub: str = "",
            name: str = "", namespace: str = TENANT) -> bool:
    review = plane.admin.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": ACCOUNT, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}",
                                             "system:authenticated"],
                 "resourceAttributes": {"group": group, "resource": resource, "subresource": sub, "verb": verb,
                                        "name": name, "namespace": namespace}},
    })
    return bool(review["status"]["allowed"])


def test_every_service_object_is_stored(control_plane: ControlPlane, release: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in release if "attestation" in o["metadata"]["name"]}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret", "ConfigMap", "Service",
                     "Deployment"}
    for obj in release:
        reply = stored(control_plane, obj, NAMESPACE)
        assert reply.code == 200, f"{obj['kind']}/{obj['metadata']['name']}: {reply.code} {reply.body}"


ALLOWED = [
    ("get", "resourceclaims", "", ""), ("list", "resourceclaims", "", ""), ("watch", "resourceclaims", "", ""),
    ("update", "resourceclaims", "status", ""), ("patch", "resourceclaims", "status", ""),
    ("arbitrary-node:update", "resourceclaims", "driver", DRIVER),
    ("arbitrary-node:patch", "resourceclaims", "driver", DRIVER),
]
DENIED = [
    ("create", "resourceclaims", "", ""), ("update", "resourceclaims", "", ""), ("delete", "resourceclaims", "", ""),
    ("arbitrary-node:update", "resourceclaims", "driver", "other.example.com"),
    ("arbitrary-node:patch", "resourceclaims", "driver", "other.example.com"),
    ("update", "resourceclaims", "binding", ""),
    ("create", "resourceslices", "", ""), ("list", "resourceslices", "", ""),
    ("create", "deviceclasses", "", ""), ("update", "deviceclasses", "", ""),
    ("create", "resourceclaimtemplates", "", ""),
]
CORE_DENIED = [("get", "secrets"), ("list", "secrets"), ("list", "pods"), ("patch", "pods"), ("create", "pods"),
               ("get", "configmaps"), ("update", "nodes"), ("create", "serviceaccounts")]


@pytest.mark.parametrize(("verb", "resource", "sub", "name"), ALLOWED)
def test_the_service_may(control_plane: ControlPlane, release: list[dict[str, Any]], verb: str, resource: str,
                         sub: str, name: str) -> None:
    assert allowed(control_plane, verb, resource, sub=sub, name=name)


@pytest.mark.parametrize(("verb", "resource", "sub", "name"), DENIED)
def test_the_service_may_not(control_plane: ControlPlane, release: list[dict[str, Any]], verb: str, resource: str,
                             sub: str, name: str) -> None:
    assert not allowed(control_plane, verb, resource, sub=sub, name=name)


def test_the_service_may_create_events_and_nothing_else_in_core(control_plane: ControlPlane,
                                                                 release: list[dict[str, Any]]) -> None:
    assert allowed(control_plane, "create", "events", group="")
    assert not [(v, r) for v, r in CORE_DENIED if allowed(control_plane, v, r, group="")]
    assert not allowed(control_plane, "get", "secrets", group="", namespace=NAMESPACE)


def _allocated_claim(plane: ControlPlane, name: str) -> dict[str, Any]:
    """A claim allocated (by the admin, as the scheduler would) one device of this driver and one of another."""
    plane.ensure_namespace(TENANT, {"cc-gpu.io/gpu-tenant": "true"})  # the chart's tenant-namespace policy
    plane.admin("DELETE", f"{CLAIMS}/{name}")
    requests = [{"name": r, "exactly": {"deviceClassName": "attested.attsvc.cc-gpu.io"}} for r in ("gpu", "nic")]
    plane.admin.create(CLAIMS, {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                                "metadata": {"name": name}, "spec": {"devices": {"requests": requests}}})
    allocation = {"devices": {"results": [
        {"request": "gpu", "driver": DRIVER, "pool": "node-a", "device": "gpu-0"},
        {"request": "nic", "driver": "other.example.com", "pool": "node-a", "device": "nic-0"},
    ]}, "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["node-a"]}]}]}}
    return plane.admin("PATCH", f"{CLAIMS}/{name}/status", {"status": {"allocation": allocation}},
                       content_type="application/merge-patch+json").ok()


def _device_status(driver: str, device: str) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"driver": driver, "pool": "node-a", "device": device, "data": {"attested": True},
            "conditions": [{"type": "Attested", "status": "True", "reason": "GuestEvidenceAccepted",
                            "message": "evidence: guest", "lastTransitionTime": now}]}


def test_the_service_writes_its_drivers_device_status_from_any_node(control_plane: ControlPlane,
                                                                    service: Rest) -> None:
    claim = _allocated_claim(control_plane, "attsvc-claim")
    path = f"{CLAIMS}/attsvc-claim/status"
    assert service("GET", f"{CLAIMS}/attsvc-claim").code == 200
    ours = {"status": {"devices": [_device_status(DRIVER, "gpu-0")]}}
    reply = service("PATCH", path, ours, content_type="application/merge-patch+json")
    assert reply.code == 200, reply.body
    # Another driver's entry: the server's DRA status authorization refuses it (resourceNames is this driver).
    theirs = {"status": {"devices": [_device_status(DRIVER, "gpu-0"), _device_status("other.example.com", "nic-0")]}}
    reply = service("PATCH", path, theirs, content_type="application/merge-patch+json")
    assert reply.code == 422, reply.body
    assert 'resource="resourceclaims/driver", verb="[arbitrary-node:patch]"' in reply.body["message"]
    # Nor the allocation (resourceclaims/binding), nor the claim itself.
    moved = {"status": {"allocation": None}}
    assert service("PATCH", path, moved, content_type="application/merge-patch+json").code in (403, 422)
    current = control_plane.admin.get(f"{CLAIMS}/attsvc-claim")
    assert service("PUT", f"{CLAIMS}/attsvc-claim", current).code == 403
    assert service("DELETE", f"{CLAIMS}/attsvc-claim").code == 403
    after = control_plane.admin.get(f"{CLAIMS}/attsvc-claim")
    assert after["status"]["allocation"] == claim["status"]["allocation"]
    assert [d["driver"] for d in after["status"]["devices"]] == [DRIVER]


def test_the_generated_certificate_survives_an_upgrade(control_plane: ControlPlane,
                                                       release: list[dict[str, Any]]) -> None:
    """The chart generates the serving certificate once (its template looks the Secret up on the server): guests
    given the CA keep trusting the service after `helm upgrade`."""
    path = f"/api/v1/namespaces/{NAMESPACE}/secrets/attsvc-cc-gpu-attestation-tls"
    before = control_plane.admin.get(path)["data"]
    upgraded = upgrade(control_plane, release=RELEASE, namespace=NAMESPACE,
                       values=VALUES | {"attestationService": {**VALUES["attestationService"], "replicas": 3}})
    assert next(o for o in upgraded if o["kind"] == "Deployment" and "attestation" in o["metadata"]["name"])[
        "spec"]["replicas"] == 3
    assert control_plane.admin.get(path)["data"] == before
    ca = control_plane.admin.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/attsvc-cc-gpu-attestation-ca")["data"]
    assert base64.b64decode(before["ca.crt"]).decode().strip() == ca["ca.crt"].strip()
