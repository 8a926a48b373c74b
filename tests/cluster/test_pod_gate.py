"""The released-Kata CDI path on the real API server: Kata GPU pods are held by the chart's mutating policy, the
pod-gate controller gives each its own CDI device name (from the UID the server assigned) and releases it, and the
guard admits no other cc-gpu CDI value on any pod, ever."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.dra import podgate
from cc_gpu.kube.client import KubernetesApi

from .chart import NAMESPACE, TENANT_LABEL
from .controlplane import ControlPlane, Reply, write_kubeconfig

pytestmark = pytest.mark.cluster

TENANT = "tenant-gated"
PODS = f"/api/v1/namespaces/{TENANT}/pods"
DRY = "?dryRun=All"
ANNOTATION = "cdi.k8s.io/cc-gpu"
GUARD = "a pod's cdi.k8s.io annotations may name only its own cc-gpu device"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, chart_release: list[dict[str, Any]]) -> Iterator[ControlPlane]:
    control_plane.ensure_namespace(TENANT, {TENANT_LABEL: "true"})
    # The chart's policies are enforced once the server's informers have them: wait for the guard to deny.
    control_plane.wait_for("the chart's pod policies to be enforced", lambda: denial(control_plane.admin(
        "POST", PODS + DRY, pod(annotations={ANNOTATION: "nvidia.com/pgpu=0"}))))
    yield control_plane


@pytest.fixture(scope="module")
def pod_gate(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesApi]:
    """The controller's API client with the chart's pod-gate ServiceAccount token (real RBAC and scope policy)."""
    token = cluster.admin.create(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/cc-gpu-pod-gate/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    path = tmp_path_factory.mktemp("pod-gate") / "kubeconfig"
    write_kubeconfig(path, cluster.url, cluster.ca_file, token=token["status"]["token"])
    api = KubernetesApi(Path(path))
    yield api
    api.close()


def pod(runtime_class: str | None = "kata-qemu-nvidia-gpu-snp", *, claims: bool = True,
        annotations: dict[str, str] | None = None, name: str = "job") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "cuda", "image": "cuda"}]}
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if claims:
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "gpu"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": TENANT, "annotations": annotations or {}}, "spec": spec}


def denial(reply: Reply) -> str:
    """The denial message, or "" when the request was admitted."""
    return "" if 200 <= reply.code < 300 else str(reply.body.get("message", reply.body))


def gates(obj: dict[str, Any]) -> list[str]:
    return [g["name"] for g in obj["spec"].get("schedulingGates", [])]


@pytest.mark.parametrize("runtime_class", ["kata-qemu-nvidia-gpu-snp", "kata-qemu-nvidia-gpu-tdx",
                                           "kata-qemu-nvidia-gpu"])
def test_kata_gpu_pods_are_held_until_they_have_their_device(cluster: ControlPlane, runtime_class: str) -> None:
    reply = cluster.admin("POST", PODS + DRY, pod(runtime_class, annotations={"team": "ml"}))
    assert not denial(reply), denial(reply)
    assert gates(reply.body) == [podgate.GATE]
    assert reply.body["metadata"]["labels"] == {podgate.LABEL: "pending"}
    assert reply.body["metadata"]["annotations"] == {"team": "ml"}


@pytest.mark.parametrize(("case", "obj"), [("runc pod", pod(None)), ("kata gpu pod without claims", pod(claims=False))])
def test_other_pods_are_not_held(cluster: ControlPlane, case: str, obj: dict[str, Any]) -> None:
    reply = cluster.admin("POST", PODS + DRY, obj)
    assert not denial(reply), case
    assert gates(reply.body) == [], case


@pytest.mark.parametrize(("case", "annotations"), [
    ("a device value chosen by the pod", {ANNOTATION: "cc-gpu.io/vfio=pod-0b5e6a52-86f6-4b0e-a0a6-1d37f3f4d1e2"}),
    ("another vendor's device under our key", {ANNOTATION: "nvidia.com/pgpu=0"}),
    ("another claim's device under any key", {"cdi.k8s.io/steal": "example.com/a=b,cc-gpu.io/vfio=claim-1-gpu-0"}),
])
@pytest.mark.parametrize("runtime_class", ["kata-qemu-nvidia-gpu-snp", None])
def test_no_pod_is_created_naming_a_cc_gpu_device(cluster: ControlPlane, case: str, annotations: dict[str, str],
                                                  runtime_class: str | None) -> None:
    assert GUARD in denial(cluster.admin("POST", PODS + DRY, pod(runtime_class, annotations=annotations))), case


def test_another_vendors_cdi_annotation_is_not_ours_to_judge(cluster: ControlPlane) -> None:
    assert not denial(cluster.admin("POST", PODS + DRY, pod(annotations={"cdi.k8s.io/nic": "example.com/net=eth1"})))


@pytest.fixture
def held(cluster: ControlPlane) -> Iterator[dict[str, Any]]:
    created = cluster.admin.create(PODS, pod(name="held"))
    yield created
    cluster.admin("DELETE", f"{PODS}/held", {"gracePeriodSeconds": 0})
    cluster.wait_for("the held pod to go", lambda: cluster.admin("GET", f"{PODS}/held").code == 404)


def test_pod_gate_gives_the_pod_its_own_device_and_releases_it(cluster: ControlPlane, pod_gate: KubernetesApi,
                                                              held: dict[str, Any]) -> None:
    uid = held["metadata"]["uid"]
    assert gates(held) == [podgate.GATE]
    assert podgate.release_all(pod_gate) == {"released": 1, "retry": 0}
    stored = cluster.admin.get(f"{PODS}/held")
    assert stored["metadata"]["annotations"] == {ANNOTATION: f"cc-gpu.io/vfio=pod-{uid}"}
    assert re.fullmatch(r"cc-gpu\.io/vfio=pod-[0-9a-f-]{36}", stored["metadata"]["annotations"][ANNOTATION])
    assert gates(stored) == []
    assert podgate.LABEL not in stored["metadata"].get("labels", {})
    assert podgate.release_all(pod_gate) == {"released": 0, "retry": 0}  # nothing held any more
    # Once set, the annotation never changes, not even by an admin.
    patch = {"metadata": {"annotations": {ANNOTATION: "cc-gpu.io/vfio=pod-other"}}}
    assert GUARD in denial(cluster.admin("PATCH", f"{PODS}/held", patch, content_type=MERGE))
    assert "cannot be changed or removed" in denial(cluster.admin(
        "PATCH", f"{PODS}/held", {"metadata": {"annotations": {ANNOTATION: None}}}, content_type=MERGE))


def test_the_gate_comes_off_only_with_the_annotation(cluster: ControlPlane, held: dict[str, Any]) -> None:
    reply = cluster.admin("PATCH", f"{PODS}/held", [{"op": "remove", "path": "/spec/schedulingGates/0"}],
                          content_type="application/json-patch+json")
    assert "scheduling gate comes off only together with" in denial(reply)


def test_pod_gate_may_change_nothing_else(cluster: ControlPlane, pod_gate: KubernetesApi,
                                          held: dict[str, Any]) -> None:
    from cc_gpu.kube.errors import ApiError  # noqa: PLC0415

    image = [{"op": "replace", "path": "/spec/containers/0/image", "value": "attacker/image"}]
    with pytest.raises(ApiError, match="may not change a pod's containers"):
        pod_gate.patch_pod(TENANT, "held", [*podgate.release_patch(held), *image])
    unheld = cluster.admin.create(PODS, pod(None, name="unheld"))
    try:
        with pytest.raises(ApiError, match="only releases pods it holds"):
            pod_gate.patch_pod(TENANT, "unheld", [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}])
    finally:
        cluster.admin("DELETE", f"{PODS}/unheld", {"gracePeriodSeconds": 0})
    assert unheld["metadata"]["name"] == "unheld"
