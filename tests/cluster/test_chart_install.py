"""`helm install` of the chart into the real API server: every object accepted, every admission policy type-checked
by the server's own CEL against the real schemas, `helm uninstall` clean."""

from __future__ import annotations

from typing import Any

import pytest

from .chart import installed, stored
from .controlplane import ControlPlane

pytestmark = pytest.mark.cluster

# Cluster-scoped names that come from values, so this release can sit beside the session's default one.
PROBE_VALUES = {
    "deviceClasses": {"vfio": {"name": "vfio.probe.cc-gpu.io"}, "attested": {"name": "attested.probe.cc-gpu.io"}},
    "attestation": {"keys": {"namespace": "cc-gpu-probe-keys"}},
}


def test_every_object_is_accepted_and_uninstall_leaves_nothing(control_plane: ControlPlane) -> None:
    with installed(control_plane, release="probe", namespace="cc-gpu-probe", values=PROBE_VALUES) as objects:
        kinds = sorted({o["kind"] for o in objects})
        assert {"DaemonSet", "Deployment", "ClusterRole", "DeviceClass", "ValidatingAdmissionPolicy",
                "MutatingAdmissionPolicy"} <= set(kinds)
        for obj in objects:
            reply = stored(control_plane, obj, "cc-gpu-probe")
            assert reply.code == 200, f"{obj['kind']}/{obj['metadata']['name']}: {reply.code} {reply.body}"
            assert reply.body["metadata"]["labels"]["app.kubernetes.io/instance"] == "probe"
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue  # a namespace goes through Terminating first; checked below
        reply = stored(control_plane, obj, "cc-gpu-probe")
        assert reply.code == 404, f"{obj['kind']}/{obj['metadata']['name']} survived helm uninstall"
    namespace = control_plane.admin("GET", "/api/v1/namespaces/cc-gpu-probe-keys")
    assert namespace.code == 404 or namespace.body["status"]["phase"] == "Terminating"


def test_validating_policies_type_check_against_the_real_schemas(control_plane: ControlPlane,
                                                                 chart_release: list[dict[str, Any]]) -> None:
    """The API server type-checks each ValidatingAdmissionPolicy's CEL against the OpenAPI schemas of the resources
    it matches (the Kubernetes CEL libraries included) and reports warnings in status.typeChecking."""
    policies = [o for o in chart_release if o["kind"] == "ValidatingAdmissionPolicy"]
    assert len(policies) >= 5
    for policy in policies:
        path = f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{policy['metadata']['name']}"

        def checked(path: str = path) -> Any:
            body = control_plane.admin.get(path)
            status = body.get("status", {})
            done = status.get("observedGeneration") == body["metadata"]["generation"] and "typeChecking" in status
            return body if done else None

        body = control_plane.wait_for(f"type checking of {policy['metadata']['name']}", checked)
        assert body["status"]["typeChecking"].get("expressionWarnings", []) == [], policy["metadata"]["name"]


def test_mutating_policy_is_stored_as_written(control_plane: ControlPlane,
                                              chart_release: list[dict[str, Any]]) -> None:
    """MutatingAdmissionPolicy has no type-checking status; the server compiles its CEL on create (a compile error
    is a 422), and tests/cluster/test_admission.py exercises every expression."""
    for policy in [o for o in chart_release if o["kind"] == "MutatingAdmissionPolicy"]:
        body = control_plane.admin.get(
            f"/apis/admissionregistration.k8s.io/v1/mutatingadmissionpolicies/{policy['metadata']['name']}")
        assert body["spec"]["mutations"] == policy["spec"]["mutations"]
