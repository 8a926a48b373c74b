"""The plugin as the chart runs it, against the real control plane: real RBAC, real allocation, real claim status.

Three nodes, each with its own plugin process (simulated host, kubelet double) authenticated by a pod-bound token of
the chart's ServiceAccount: a healthy DGX-like node (8 GPUs), a node with one unhealthy GPU (SR-IOV enabled by an
admin, published with a NoSchedule taint) and a node with no GPU selected. Pods with ResourceClaimTemplates that use
the chart's DeviceClasses (with their opaque config) are scheduled by the real kube-scheduler, their claims made by
the real resourceclaim controller, then prepared through the plugin by the kubelet double; the status the plugin
applies is read back from the real server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import yaml

from cc_gpu.dra import podgate
from cc_gpu.kube import errors
from cc_gpu.kube.client import KubernetesApi

from .chart import NAMESPACE, TENANT_LABEL
from .controlplane import ControlPlane, write_kubeconfig
from .plugin_node import (
    ATTESTED_CLASS,
    DRIVER,
    SNP,
    VFIO_CLASS,
    PluginNode,
    plugin_node,
    slice_writes,
)

pytestmark = pytest.mark.cluster

HEALTHY, SICK, EMPTY = "node-a", "node-sick", "node-empty"
TENANT = "gpu-tenant"
STEADY_SECONDS = 60


@pytest.fixture(scope="module")
def nodes(
    control_plane: ControlPlane, chart_release: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, PluginNode]]:
    root = tmp_path_factory.mktemp("plugin-nodes")
    with ExitStack() as stack:
        found = {
            name: stack.enter_context(plugin_node(control_plane, chart_release, root / name, name))
            for name in (HEALTHY, SICK, EMPTY)
        }
        found[HEALTHY].start()
        found[SICK].start()
        found[EMPTY].start("--select-label", "cc-gpu.io/no-such-label")
        found[HEALTHY].wait_published(lambda s: len(_devices(s)) == 8)
        sick = found[SICK].wait_published(lambda s: len(_devices(s)) == 8)
        # An admin enables SR-IOV on one GPU: a GPU with VFs is not assignable whole, so it is published tainted.
        bdf = _devices(sick)[0]["attributes"]["resource.kubernetes.io/pciBusID"]["string"]
        (found[SICK].sim_root / "sys" / "bus" / "pci" / "devices" / bdf / "sriov_numvfs").write_text("2\n")
        found[SICK].wait_published(lambda s: any(d.get("taints") for d in _devices(s)))
        found[EMPTY].wait_published()
        control_plane.ensure_namespace(TENANT, {TENANT_LABEL: "true"})
        yield found


@pytest.fixture(scope="module")
def gate(
    control_plane: ControlPlane, nodes: dict[str, PluginNode], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubernetesApi]:
    """The chart holds Kata GPU pods with a scheduling gate until its pod-gate controller releases them: that
    controller's release pass, with the chart's pod-gate identity, runs while the tests wait for scheduling."""
    token = control_plane.admin.create(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/cc-gpu-pod-gate/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    path = tmp_path_factory.mktemp("pod-gate") / "kubeconfig"
    write_kubeconfig(path, control_plane.url, control_plane.ca_file, token=token["status"]["token"])
    api = KubernetesApi(path)
    yield api
    api.close()


def _devices(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for s in slices for d in s["spec"].get("devices") or []]


def test_slices_published_as_the_real_server_stores_them(nodes: dict[str, PluginNode]) -> None:
    (healthy,) = nodes[HEALTHY].slices()
    node = nodes[HEALTHY].plane.admin.get(f"/api/v1/nodes/{HEALTHY}")
    assert healthy["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    assert healthy["spec"]["pool"] == {
        "name": HEALTHY,
        "generation": healthy["spec"]["pool"]["generation"],
        "resourceSliceCount": 1,
    }
    assert all(not d.get("taints") for d in _devices([healthy]))
    (sick,) = nodes[SICK].slices()
    (tainted,) = [d for d in _devices([sick]) if d.get("taints")]
    (taint,) = tainted["taints"]
    assert (taint["key"], taint["effect"]) == ("cc-gpu.io/unhealthy", "NoSchedule")
    assert taint["timeAdded"], "the real server stamps timeAdded"
    (empty,) = nodes[EMPTY].slices()
    assert "devices" not in empty["spec"], "the real server does not store an empty device list"


def test_steady_state_writes_nothing(control_plane: ControlPlane, nodes: dict[str, PluginNode]) -> None:
    """60 s of rescans every 2 s on a healthy node, a node with a tainted GPU and a node without GPUs: no write."""
    before = {
        name: [(s["metadata"]["resourceVersion"], s["spec"]["pool"]["generation"]) for s in n.slices()]
        for name, n in nodes.items()
    }
    writes = slice_writes(control_plane)
    time.sleep(STEADY_SECONDS)
    assert slice_writes(control_plane) == writes, "a plugin wrote ResourceSlices in steady state"
    after = {
        name: [(s["metadata"]["resourceVersion"], s["spec"]["pool"]["generation"]) for s in n.slices()]
        for name, n in nodes.items()
    }
    assert after == before
    for node in nodes.values():
        assert node.proc is not None and node.proc.poll() is None, node.log()


def _create(plane: ControlPlane, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return plane.admin.create(path, body)  # type: ignore[no-any-return]


def _vm_pod(plane: ControlPlane, gate: KubernetesApi, name: str, device_class: str, node: str) -> tuple[str, str, str]:
    """A pod asking for one GPU of `device_class` through a template; returns its claim once scheduled."""
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": device_class}}]}}},
    }
    _create(plane, f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaimtemplates", template)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {
            "runtimeClassName": SNP,
            "nodeSelector": {"kubernetes.io/hostname": node},
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": name}],
            "containers": [
                {"name": "vm", "image": "registry.example/vm:1", "resources": {"claims": [{"name": "gpu"}]}}
            ],
        },
    }
    _create(plane, f"/api/v1/namespaces/{TENANT}/pods", pod)

    def scheduled() -> tuple[str, str, str] | None:
        podgate.release_all(gate)
        got = plane.admin.get(f"/api/v1/namespaces/{TENANT}/pods/{name}")
        statuses = (got.get("status") or {}).get("resourceClaimStatuses") or []
        if got["spec"].get("nodeName") != node or not statuses or not statuses[0].get("resourceClaimName"):
            return None
        claim = plane.admin.get(
            f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaims/{statuses[0]['resourceClaimName']}"
        )
        reserved = (claim.get("status") or {}).get("reservedFor") or []
        if not any(r.get("uid") == got["metadata"]["uid"] for r in reserved):
            return None
        return TENANT, claim["metadata"]["name"], claim["metadata"]["uid"]

    try:
        return plane.wait_for(f"pod {name} scheduled with its claim allocated", scheduled, timeout=90)  # type: ignore[no-any-return]
    except Exception as e:
        pod_now = plane.admin("GET", f"/api/v1/namespaces/{TENANT}/pods/{name}").body
        claims = plane.admin("GET", f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaims").body
        events = plane.admin("GET", f"/api/v1/namespaces/{TENANT}/events").body
        raise AssertionError(
            f"{str(e)[:300]}\npod: {json.dumps(pod_now)[:3000]}\nclaims: {json.dumps(claims)[:3000]}\n"
            f"events: {json.dumps([(x.get('reason'), x.get('message')) for x in events.get('items', [])])[:3000]}"
        ) from None


def _claim(plane: ControlPlane, ref: tuple[str, str, str]) -> dict[str, Any]:
    return plane.admin.get(f"/apis/resource.k8s.io/v1/namespaces/{ref[0]}/resourceclaims/{ref[1]}")  # type: ignore[no-any-return]


def _entry(claim: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [d for d in (claim.get("status") or {}).get("devices") or [] if d["driver"] == DRIVER]
    return dict(entry)


def test_guest_attestation_without_a_service_is_refused(
    control_plane: ControlPlane, nodes: dict[str, PluginNode], gate: KubernetesApi
) -> None:
    """The chart's attested class asks for guest attestation (its default, `evidence: guest`); a node whose settings
    name no verification service refuses the claim and says what is missing, rather than attesting on the host."""
    ref = _vm_pod(control_plane, gate, "vm-attested-guest", ATTESTED_CLASS, HEALTHY)
    result = nodes[HEALTHY].kubelet.prepare(DRIVER, [ref])[ref[2]]
    assert "names no verification service (attestation.service_url)" in result.error, result.error


def test_host_attestation_of_cc_mode_gpus_is_refused_naming_the_guest_path(
    control_plane: ControlPlane, nodes: dict[str, PluginNode], gate: KubernetesApi
) -> None:
    """The attested class as `deviceClasses.attested.evidence: host` renders it asks for host-side attestation; the
    simulated GPUs are in CC mode `on`, which no longer answer the host: the plugin refuses, names the guest path,
    and records `Attested=False` on the claim."""
    node = nodes[HEALTHY]
    host_class = "attested-host-vfio.gpu.cc-gpu.io"
    chart_class = control_plane.admin.get(f"/apis/resource.k8s.io/v1/deviceclasses/{ATTESTED_CLASS}")
    spec = json.loads(json.dumps(chart_class["spec"]))
    spec["config"][0]["opaque"]["parameters"]["attestation"]["evidence"] = "host"
    # Compact JSON, as Helm and kubectl send it: the server keeps the opaque parameters' bytes, and the plugin's status
    # write must be able to send them back unchanged.
    body = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": host_class}, "spec": spec}
    control_plane.admin("POST", "/apis/resource.k8s.io/v1/deviceclasses",
                        json.dumps(body, separators=(",", ":")).encode()).ok()
    ref = _vm_pod(control_plane, gate, "vm-attested-host", host_class, HEALTHY)
    result = node.kubelet.prepare(DRIVER, [ref])[ref[2]]
    assert "use the guest attestation path" in result.error, result.error
    entry = _entry(_claim(control_plane, ref))
    assert [(c["type"], c["status"]) for c in entry["conditions"]] == [("Attested", "False")]
    assert entry["data"]["attestation"]["evidence"] == "host, pre-flight"


def test_gpus_in_cc_mode_are_not_host_attested(nodes: dict[str, PluginNode]) -> None:
    """The simulated GPUs are in CC mode `on`, which no longer answer the host: discovery cannot attest them, so
    they publish `attested: false` and a host-attested class selecting `attested == true` (`deviceClasses.attested`
    with `evidence: host`, `selectAttested: true`) never allocates them; such GPUs take the guest path (the chart's
    default, `tests/cluster/test_guest_real.py`)."""
    (healthy,) = nodes[HEALTHY].slices()
    devices = _devices([healthy])
    assert {d["attributes"]["ccMode"]["string"] for d in devices} == {"on"}
    assert {d["attributes"]["attested"]["bool"] for d in devices} == {False}


@pytest.mark.parametrize(
    ("device_class", "conditions"),
    [
        pytest.param(VFIO_CLASS, ["Ready"], id="vfio-class"),
    ],
)
def test_real_allocation_prepared_and_status_recorded(
    control_plane: ControlPlane,
    nodes: dict[str, PluginNode],
    gate: KubernetesApi,
    device_class: str,
    conditions: list[str],
) -> None:
    node = nodes[HEALTHY]
    ref = _vm_pod(control_plane, gate, f"vm-{device_class.split('.', maxsplit=1)[0]}", device_class, HEALTHY)
    before = _claim(control_plane, ref)
    allocation = before["status"]["allocation"]
    (config,) = [c for c in allocation["devices"]["config"] if c["opaque"]["driver"] == DRIVER]
    assert config["source"] == "FromClass", "the chart's DeviceClass carries opaque config"
    result = node.kubelet.prepare(DRIVER, [ref])[ref[2]]
    assert result.error == "", node.log()
    after = _claim(control_plane, ref)
    assert after["status"]["allocation"] == allocation, "the allocation is never rewritten"
    entry = _entry(after)
    assert entry["pool"] == HEALTHY
    assert entry["device"] == allocation["devices"]["results"][0]["device"]
    assert sorted(c["type"] for c in entry["conditions"]) == conditions
    assert all(c["status"] == "True" for c in entry["conditions"]), entry
    if "Attested" in conditions:
        assert entry["data"]["attestation"]["ok"] is True
    assert node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}


def test_another_writer_keeps_its_condition(
    control_plane: ControlPlane, nodes: dict[str, PluginNode], gate: KubernetesApi
) -> None:
    """A condition another field manager applied to the plugin's device entry survives the plugin's write."""
    node = nodes[HEALTHY]
    ref = _vm_pod(control_plane, gate, "vm-shared", VFIO_CLASS, HEALTHY)
    device = _claim(control_plane, ref)["status"]["allocation"]["devices"]["results"][0]["device"]
    body = _device_status(ref, HEALTHY, device, "BindingReady", "Bound")
    node.api.apply_resource_claim_status(ref[0], ref[1], body, field_manager=f"{DRIVER}/binding")
    assert node.kubelet.prepare(DRIVER, [ref])[ref[2]].error == "", node.log()
    entry = _entry(_claim(control_plane, ref))
    assert sorted(c["type"] for c in entry["conditions"]) == ["BindingReady", "Ready"]
    assert node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}


def _device_status(ref: tuple[str, str, str], pool: str, device: str, condition: str, reason: str) -> dict[str, Any]:
    """An apply body with one True condition on this driver's entry for `device` of the claim `ref`."""
    status = {"type": condition, "status": "True", "reason": reason, "message": "",
              "lastTransitionTime": "2026-01-01T00:00:00Z"}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": ref[1], "namespace": ref[0]},
        "status": {"devices": [{"driver": DRIVER, "pool": pool, "device": device, "conditions": [status]}]},
    }


def _token(node: PluginNode) -> str:
    config = yaml.safe_load((node.root / "kubeconfig").read_text())
    return str(config["users"][0]["user"]["token"])


def test_least_privilege(control_plane: ControlPlane, nodes: dict[str, PluginNode], gate: KubernetesApi) -> None:
    """What the plugin's identity may not do, decided by the real server's RBAC, Node-scoped driver checks and the
    chart's admission policies."""
    me = control_plane.as_token(_token(nodes[HEALTHY]))
    assert me("GET", "/api/v1/secrets").code == 403
    assert me("GET", f"/api/v1/namespaces/{TENANT}/configmaps").code == 403
    assert me("GET", "/apis/resource.k8s.io/v1/resourceclaims").code == 403  # get by name only, no list
    assert me("DELETE", f"/api/v1/nodes/{SICK}").code == 403

    # A claim allocated on the sick node: its own plugin may write the device status, node-a's may not.
    ref = _vm_pod(control_plane, gate, "vm-elsewhere", VFIO_CLASS, SICK)
    device = _claim(control_plane, ref)["status"]["allocation"]["devices"]["results"][0]["device"]
    body = _device_status(ref, SICK, device, "Ready", "Probe")
    with pytest.raises(errors.InvalidError) as refused:  # the driver check answers 422, naming status.devices
        nodes[HEALTHY].api.apply_resource_claim_status(ref[0], ref[1], body, field_manager="probe")
    ((field, reason),) = [(c.field, c.reason) for c in refused.value.causes]
    assert (field, reason) == ("status.devices", "FieldValueForbidden")
    assert "resourceclaims/driver" in str(refused.value)
    nodes[SICK].api.apply_resource_claim_status(ref[0], ref[1], body, field_manager="probe")
    # Its own node's identity still may not write another driver's entry (resourceNames is the chart's driver).
    other = {**body, "status": {"devices": [{**body["status"]["devices"][0], "driver": "other.example.com"}]}}
    with pytest.raises((errors.ForbiddenError, errors.InvalidError)):
        nodes[SICK].api.apply_resource_claim_status(ref[0], ref[1], other, field_manager="probe")
    # Nor rewrite the claim, nor the allocation.
    claim = _claim(control_plane, ref)
    assert me("PUT", f"/apis/resource.k8s.io/v1/namespaces/{ref[0]}/resourceclaims/{ref[1]}", claim).code == 403

    # A slice for another node: RBAC allows resourceslices, the chart's own-node policy refuses it.
    (sick_slice,) = nodes[SICK].slices()
    forged = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "forged"},
        "spec": {**sick_slice["spec"], "pool": {**sick_slice["spec"]["pool"], "name": "forged"}},
    }
    assert me("POST", "/apis/resource.k8s.io/v1/resourceslices", forged).code in (403, 422)


def test_a_read_modify_put_of_the_claim_is_refused(
    control_plane: ControlPlane, nodes: dict[str, PluginNode], gate: KubernetesApi
) -> None:
    """Why the plugin applies instead of PUTting: the client re-serialises the allocation's opaque parameters (the
    real server keeps RawExtension bytes and compares them), so a PUT of the claim read back looks like a change of
    the immutable allocation, which the server refuses (and would need `resourceclaims/binding`)."""
    ref = _vm_pod(control_plane, gate, "vm-put", VFIO_CLASS, HEALTHY)
    api = nodes[HEALTHY].api
    claim = api.get_resource_claim(ref[0], ref[1])
    respaced = json.loads(json.dumps(claim))
    with pytest.raises((errors.InvalidError, errors.ForbiddenError)):
        api.update_resource_claim_status(ref[0], ref[1], respaced)


def test_status_recorded_over_a_class_with_keys_out_of_order(
    control_plane: ControlPlane, nodes: dict[str, PluginNode], gate: KubernetesApi
) -> None:
    """A DeviceClass whose opaque parameters were sent compact but with keys out of order (a Go client marshalling a
    struct): the scheduler copies those bytes into the allocation, the server refuses the plugin's apply over them,
    and the plugin's JSON-patch fallback records the status anyway."""
    name = "vfio-unsorted.gpu.cc-gpu.io"
    raw = (
        '{"apiVersion":"resource.k8s.io/v1","kind":"DeviceClass","metadata":{"name":"' + name + '"},'
        '"spec":{"selectors":[{"cel":{"expression":"device.driver == \\"' + DRIVER + '\\""}}],'
        '"config":[{"opaque":{"driver":"' + DRIVER + '",'
        '"parameters":{"kind":"VfioDeviceConfig","apiVersion":"cc-gpu.io/v1alpha1"}}}]}}'
    )
    created = control_plane.admin("POST", "/apis/resource.k8s.io/v1/deviceclasses", raw.encode())
    assert created.code == 201, created.body
    node = nodes[HEALTHY]
    ref = _vm_pod(control_plane, gate, "vm-unsorted", name, HEALTHY)
    assert node.kubelet.prepare(DRIVER, [ref])[ref[2]].error == "", node.log()
    entry = _entry(_claim(control_plane, ref))
    assert [c["type"] for c in entry["conditions"]] == ["Ready"]
    assert "writing device status by JSON patch" in node.log()
    assert node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}
