"""The example manifests (deploy/examples/) applied to the real API server with the chart installed, in order, as an
admin would: every object admitted; the pod held, then released by the pod-gate controller with its own CDI device;
its claim made from the template by the real resourceclaim controller; the template refused outside a tenant
namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cc_gpu.dra import podgate
from cc_gpu.kube.client import KubernetesApi

from .chart import NAMESPACE, REPO
from .controlplane import ControlPlane, object_path, write_kubeconfig

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "deploy" / "examples"


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(EXAMPLES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def applied(control_plane: ControlPlane, chart_release: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    admin = control_plane.admin
    created = []
    for obj in manifests():
        path = object_path(obj, name=False)
        control_plane.wait_for(f"{obj['kind']} {obj['metadata']['name']} to be admitted",
                               lambda obj=obj, path=path: admin("POST", path, obj).code in (201, 409))
        created.append(obj)
        if obj["kind"] == "Namespace":
            control_plane.ensure_namespace(obj["metadata"]["name"], obj["metadata"].get("labels"))
    yield created
    for obj in reversed(created):
        admin("DELETE", object_path(obj), {"gracePeriodSeconds": 0})


def test_the_example_pod_gets_its_gpu_claim_and_its_own_cdi_device(
        control_plane: ControlPlane, applied: list[dict[str, Any]], tmp_path: Path) -> None:
    (pod,) = [o for o in applied if o["kind"] == "Pod"]
    path = object_path(pod)
    stored = control_plane.admin.get(path)
    assert [g["name"] for g in stored["spec"]["schedulingGates"]] == [podgate.GATE]

    token = control_plane.admin.create(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/cc-gpu-pod-gate/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}})
    write_kubeconfig(tmp_path / "kubeconfig", control_plane.url, control_plane.ca_file,
                     token=token["status"]["token"])
    api = KubernetesApi(tmp_path / "kubeconfig")
    try:
        control_plane.wait_for("the pod-gate controller to release the pod",
                               lambda: podgate.release_all(api)["released"] == 1)
    finally:
        api.close()
    released = control_plane.admin.get(path)
    assert released["metadata"]["annotations"] == {
        "cdi.k8s.io/cc-gpu": f"cc-gpu.io/vfio=pod-{released['metadata']['uid']}"}
    assert "schedulingGates" not in released["spec"]

    def claim_status() -> Any:
        statuses = control_plane.admin.get(path).get("status", {}).get("resourceClaimStatuses")
        return statuses or None

    (status,) = control_plane.wait_for("the resourceclaim controller to make the pod's claim", claim_status)
    namespace = pod["metadata"]["namespace"]
    claim = control_plane.admin.get(f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/"
                                    f"{status['resourceClaimName']}")
    assert claim["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == "attested-vfio.gpu.cc-gpu.io"


def test_the_template_is_refused_outside_a_tenant_namespace(control_plane: ControlPlane,
                                                            applied: list[dict[str, Any]]) -> None:
    (template,) = [o for o in applied if o["kind"] == "ResourceClaimTemplate"]
    moved = {**template, "metadata": {**template["metadata"], "namespace": "default"}}
    reply = control_plane.admin("POST", object_path(moved, name=False) + "?dryRun=All", moved)
    assert reply.code in (403, 422)
    assert "cc-gpu device classes may be requested only in namespaces labelled" in reply.body["message"]
