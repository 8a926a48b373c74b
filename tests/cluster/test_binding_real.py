"""Binding conditions and quarantine taints against the real kube-apiserver and kube-scheduler.

A control plane of its own for this module: the chart installed with `binding.conditions` on, and the scheduler's
DynamicResources `bindingTimeout` at 20 s (default 600 s) so the timeout case fits a test. One node runs the plugin
on a simulated DGX H100 with two GPUs selected, so where the scheduler puts a claim is known: the allocator takes the
first device of the slice that fits, and the second after the first is tainted. A second control plane with
`DRADeviceBindingConditions` and `DRADeviceTaints` off shows the plugin detecting that and behaving as without them.

"No sysfs write" is counted on the simulated kernel itself: every change it makes appends a uevent to its log.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.dra import podgate
from cc_gpu.dra.bindlabel import LABEL, ClaimLabeler
from cc_gpu.dra.checkpoint import EARLY_BOUND, PREPARE_COMPLETED, PREPARE_STARTED, Checkpoint
from cc_gpu.host.sim.kernel import SimKernel
from cc_gpu.kube.client import KubernetesApi
from cc_gpu.kube.errors import ApiError

from . import chart
from .build import BuildError
from .chart import NAMESPACE, TENANT_LABEL
from .controlplane import ClusterError, ControlPlane, write_kubeconfig
from .plugin_node import DRIVER, SNP, VFIO_CLASS, PluginNode, plugin_node

pytestmark = pytest.mark.cluster

NODE = "bind-a"
TENANT = "bind-tenant"
FIRST, SECOND = "0000:18:00.0", "0000:2a:00.0"
SELECT = f'\n[selection]\nmode = "pci"\npci = ["{FIRST}", "{SECOND}"]\n'
BINDING_VALUES = {"runtimeClasses": {"create": True},
                  "binding": {"conditions": True, "quarantine": True, "quarantineSeconds": 30}}
OFF_GATES = {"DRADeviceBindingConditions": False, "DRADeviceTaints": False, "DRADeviceTaintRules": False}


def _plane(tmp: Path, **kwargs: Any) -> ControlPlane:
    try:
        return ControlPlane.start(tmp, **kwargs)
    except (BuildError, ClusterError) as e:
        pytest.fail(f"REAL CONTROL PLANE CANNOT RUN ON THIS MACHINE: {e}", pytrace=False)


def _gate_api(plane: ControlPlane, tmp: Path) -> KubernetesApi:
    token = plane.admin.create(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/cc-gpu-pod-gate/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    write_kubeconfig(tmp / "gate.kubeconfig", plane.url, plane.ca_file, token=token["status"]["token"])
    return KubernetesApi(tmp / "gate.kubeconfig")


class Cluster:
    def __init__(self, plane: ControlPlane, node: PluginNode, gate: KubernetesApi) -> None:
        self.plane, self.node, self.gate = plane, node, gate

    @property
    def kernel(self) -> SimKernel:
        return SimKernel(self.node.sim_root)

    def checkpoint(self) -> dict[str, Any]:
        return dict(Checkpoint(self.node.root / "plugins" / DRIVER).read())

    def uevents(self) -> int:
        log = self.node.sim_root / ".sim" / "uevents.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["attributes"]["resource.kubernetes.io/pciBusID"]["string"]: d
                for s in self.node.slices() for d in s["spec"].get("devices") or []}

    def driver_of(self, bdf: str) -> str | None:
        return self.kernel.driver_of(bdf)

    def create_pod(self, name: str) -> None:
        base = f"/apis/resource.k8s.io/v1/namespaces/{TENANT}"
        self.plane.admin.create(f"{base}/resourceclaimtemplates", {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": TENANT},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": VFIO_CLASS}}]}}},
        })
        self.plane.admin.create(f"/api/v1/namespaces/{TENANT}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": TENANT},
            "spec": {"runtimeClassName": SNP, "nodeSelector": {"kubernetes.io/hostname": NODE},
                     "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": name}],
                     "containers": [{"name": "vm", "image": "registry.example/vm:1",
                                     "resources": {"claims": [{"name": "gpu"}]}}]},
        })

    def pod(self, name: str) -> dict[str, Any]:
        podgate.release_all(self.gate)
        return self.plane.admin.get(f"/api/v1/namespaces/{TENANT}/pods/{name}")  # type: ignore[no-any-return]

    def claim_of(self, name: str) -> dict[str, Any] | None:
        statuses = (self.pod(name).get("status") or {}).get("resourceClaimStatuses") or []
        if not statuses or not statuses[0].get("resourceClaimName"):
            return None
        reply = self.plane.admin("GET", f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaims/"
                                        f"{statuses[0]['resourceClaimName']}")
        return reply.body if reply.code == 200 else None

    def wait(self, what: str, predicate: Any, timeout: float = 120) -> Any:
        try:
            return self.plane.wait_for(what, predicate, timeout=timeout, interval=0.2)
        except ClusterError as e:
            events = self.plane.admin("GET", f"/api/v1/namespaces/{TENANT}/events").body
            raise AssertionError(
                f"{str(e)[:2500]}\nevents: "
                f"{json.dumps([(x.get('reason'), x.get('message')) for x in events.get('items', [])])[-3000:]}\n"
                f"plugin log:\n{self.node.log()}") from None

    def scheduled(self, name: str) -> dict[str, Any]:
        """The pod's claim once the real scheduler has bound the pod to the node."""
        def bound() -> dict[str, Any] | None:
            return self.claim_of(name) if self.pod(name)["spec"].get("nodeName") == NODE else None
        return self.wait(f"pod {name} bound to {NODE}", bound)  # type: ignore[no-any-return]

    def delete_pod(self, name: str) -> None:
        self.plane.admin("DELETE", f"/api/v1/namespaces/{TENANT}/pods/{name}?gracePeriodSeconds=0")
        self.plane.admin("DELETE", f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaimtemplates/{name}")

    def settled(self) -> None:
        """Every GPU back on its host driver and nothing left in the checkpoint (no claim, no pod left)."""
        self.wait("the GPUs back on nvidia and an empty checkpoint",
                  lambda: not self.checkpoint() and all(self.driver_of(b) == "nvidia" for b in (FIRST, SECOND)))


def _ref(claim: dict[str, Any]) -> tuple[str, str, str]:
    meta = claim["metadata"]
    return meta["namespace"], meta["name"], meta["uid"]


def _conditions(claim: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for d in (claim.get("status") or {}).get("devices") or [] if d["driver"] == DRIVER
            for c in d.get("conditions") or []}


def _allocated(claim: dict[str, Any] | None) -> str | None:
    results = (((claim or {}).get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []
    return str(results[0]["device"]) if results else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("binding")
    plane = _plane(tmp / "plane", dynamic_resources_args={"bindingTimeout": "20s"})
    try:
        release = chart.install(plane, values=BINDING_VALUES)
        plane.ensure_namespace(TENANT, {TENANT_LABEL: "true"})
        gate = _gate_api(plane, tmp)
        stop = threading.Event()  # the chart's pod-gate Deployment's labeler, with its token (real RBAC and policy)
        labeler = threading.Thread(target=ClaimLabeler(gate, DRIVER, resync_seconds=10).run, args=(stop,),
                                   daemon=True)
        labeler.start()
        try:
            with plugin_node(plane, release, tmp / NODE, NODE, toml_extra=SELECT) as node:
                node.start()
                node.wait_published(lambda s: sum(len(x["spec"].get("devices") or []) for x in s) == 2)
                yield Cluster(plane, node, gate)
        finally:
            stop.set()
            labeler.join(timeout=15)
        gate.close()
    finally:
        plane.stop()


def test_devices_carry_binding_conditions(cluster: Cluster) -> None:
    for device in cluster.devices().values():
        assert device["bindingConditions"] == ["VfioReady"]
        assert device["bindingFailureConditions"] == ["VfioFailed"]
        assert not device.get("taints")


def test_early_bind_before_the_pod_lands_survives_a_crash_and_prepare_writes_nothing(cluster: Cluster) -> None:
    """The group is being bound for the claim while the pod has no node; the plugin dies mid-bind; its restart rolls
    the bind back and binds again; the scheduler binds the pod only after VfioReady; NodePrepareResources then
    changes nothing on the host."""
    for bdf in (FIRST, SECOND):
        cluster.kernel.set_bind_behaviour(bdf, "ok", delay=8.0)  # slow enough to look at, and to die in
    cluster.create_pod("early")

    def binding() -> dict[str, Any] | None:
        cluster.pod("early")  # the chart's pod-gate controller releases the pod
        entries = cluster.checkpoint()
        return next(iter(entries.values()), None)

    entry = cluster.wait("an early bind in the checkpoint", binding)
    assert entry.state in (PREPARE_STARTED, EARLY_BOUND)
    assert not cluster.pod("early")["spec"].get("nodeName"), "the pod was bound before the GPU"
    assert not _conditions(cluster.claim_of("early") or {}), "a condition before the bind finished"

    cluster.node.stop(signal.SIGKILL)
    for bdf in (FIRST, SECOND):
        cluster.kernel.set_bind_behaviour(bdf, "ok")
    assert not cluster.pod("early")["spec"].get("nodeName")
    cluster.node.start()
    assert '"rolled_back": 1' in cluster.node.log(), "startup reconciliation did not roll the early bind back"

    claim = cluster.scheduled("early")
    ready = _conditions(claim)["VfioReady"]
    assert (ready["status"], ready["reason"]) == ("True", "BoundToVfio")
    (entry,) = cluster.checkpoint().values()
    assert entry.state == EARLY_BOUND and entry.uid == claim["metadata"]["uid"]
    bdf = next(b for b, d in cluster.devices().items() if d["name"] == _allocated(claim))
    assert cluster.driver_of(bdf) == "vfio-pci"

    before = cluster.uevents()
    ref = _ref(claim)
    assert cluster.node.kubelet.prepare(DRIVER, [ref])[ref[2]].error == "", cluster.node.log()
    assert cluster.uevents() == before, "NodePrepareResources wrote to sysfs although the group was bound"
    (entry,) = cluster.checkpoint().values()
    assert entry.state == PREPARE_COMPLETED
    assert set(_conditions(cluster.claim_of("early") or {})) == {"VfioReady", "Ready"}
    assert cluster.node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}
    cluster.delete_pod("early")
    cluster.settled()


def test_the_labeler_may_set_only_the_binding_node_label(cluster: Cluster) -> None:
    """The pod-gate token labels an allocated claim with its node (the claims the plugin watches); the chart's
    pod-gate-claims policy refuses anything else: another label, or a node outside the claim's allocation."""
    cluster.create_pod("labelled")
    claim = cluster.scheduled("labelled")
    assert claim["metadata"]["labels"][LABEL] == NODE
    namespace, name, _ = _ref(claim)
    for ops in ([{"op": "add", "path": "/metadata/labels/other", "value": "x"}],
                [{"op": "replace", "path": "/metadata/labels/cc-gpu.io~1binding-node", "value": "elsewhere"}],
                [{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}]):
        with pytest.raises(ApiError):
            cluster.gate.patch_resource_claim(namespace, name, ops)
    cluster.delete_pod("labelled")
    cluster.settled()


def test_a_scheduler_timeout_releases_the_gpu(cluster: Cluster) -> None:
    """A bind slower than the scheduler's bindingTimeout (20 s here) while an admin quarantines that GPU: the
    scheduler gives up, deallocates and allocates the other GPU; when the slow bind ends the plugin finds the claim
    moved and gives the first GPU back to its host driver; the pod starts on the second."""
    cluster.kernel.set_bind_behaviour(FIRST, "ok", delay=30.0)
    cluster.create_pod("slow")

    def binding() -> bool:
        cluster.pod("slow")
        return bool(cluster.checkpoint())

    cluster.wait("the slow early bind to start", binding)
    path = "/apis/resource.k8s.io/v1/devicetaintrules"
    cluster.plane.admin.create(path, {
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule", "metadata": {"name": "slow-first"},
        "spec": {"deviceSelector": {"driver": DRIVER, "pool": NODE, "device": cluster.devices()[FIRST]["name"]},
                 "taint": {"key": "cc-gpu.io/quarantine", "value": "manual", "effect": "NoSchedule"}}})
    try:
        claim = cluster.scheduled("slow")
        assert _allocated(claim) == cluster.devices()[SECOND]["name"]
        cluster.wait("the first GPU given back", lambda: cluster.driver_of(FIRST) == "nvidia"
                     and "early bind released" in cluster.node.log())
        (entry,) = cluster.checkpoint().values()
        assert [d.device for d in entry.devices] == [cluster.devices()[SECOND]["name"]]
    finally:
        cluster.plane.admin("DELETE", f"{path}/slow-first")
        cluster.kernel.set_bind_behaviour(FIRST, "ok")
    cluster.delete_pod("slow")
    cluster.settled()


def test_a_failing_gpu_is_quarantined_and_the_pod_rescheduled_onto_another(cluster: Cluster) -> None:
    """The first GPU's bind fails: the plugin taints it (NoSchedule, cc-gpu.io/quarantine=bind-failed) and says
    VfioFailed; the real scheduler deallocates, allocates the second GPU and binds the pod there. The taint goes
    once the cause is gone: after the quarantine period a probe bind and unbind of the idle GPU works."""
    cluster.kernel.set_bind_behaviour(FIRST, "fail")
    cluster.create_pod("failing")
    claim = cluster.scheduled("failing")
    assert _allocated(claim) == cluster.devices()[SECOND]["name"]
    assert _conditions(claim)["VfioReady"]["status"] == "True"
    (taint,) = cluster.devices()[FIRST]["taints"]
    assert (taint["key"], taint["value"], taint["effect"]) == ("cc-gpu.io/quarantine", "bind-failed", "NoSchedule")
    assert "early bind failed; GPU quarantined" in cluster.node.log()
    events = cluster.plane.admin.get(f"/api/v1/namespaces/{TENANT}/events")["items"]
    assert any(e.get("reason") == "BindingConditionsPending" for e in events)
    assert cluster.driver_of(FIRST) == "nvidia", "the failed bind left the GPU off its host driver"
    ref = _ref(claim)
    assert cluster.node.kubelet.prepare(DRIVER, [ref])[ref[2]].error == ""
    assert cluster.node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}
    cluster.delete_pod("failing")
    cluster.kernel.set_bind_behaviour(FIRST, "ok")
    cluster.wait("the quarantine taint lifted", lambda: not cluster.devices()[FIRST].get("taints"), timeout=90)
    assert "its check passed" in cluster.node.log(), "the taint went without the probe bind that proves the cause gone"
    cluster.settled()


def test_an_admins_device_taint_rule_quarantines_a_gpu(cluster: Cluster) -> None:
    """The DeviceTaintRule of the README's admin guide, on the real server: the scheduler keeps off the GPU."""
    first = cluster.devices()[FIRST]["name"]
    rule = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceTaintRule", "metadata": {"name": "quarantine-first"},
            "spec": {"deviceSelector": {"driver": DRIVER, "pool": NODE, "device": first},
                     "taint": {"key": "cc-gpu.io/quarantine", "value": "manual", "effect": "NoSchedule"}}}
    path = "/apis/resource.k8s.io/v1/devicetaintrules"
    cluster.plane.admin.create(path, rule)
    try:
        cluster.create_pod("ruled")
        claim = cluster.scheduled("ruled")
        assert _allocated(claim) == cluster.devices()[SECOND]["name"]
        cluster.delete_pod("ruled")
        cluster.settled()
    finally:
        cluster.plane.admin("DELETE", f"{path}/quarantine-first")


@pytest.fixture(scope="module")
def gates_off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("binding-off")
    plane = _plane(tmp / "plane", feature_gates=OFF_GATES)
    try:
        release = chart.install(plane, values=BINDING_VALUES)
        plane.ensure_namespace(TENANT, {TENANT_LABEL: "true"})
        gate = _gate_api(plane, tmp)
        with plugin_node(plane, release, tmp / NODE, NODE, toml_extra=SELECT) as node:
            node.start()
            yield Cluster(plane, node, gate)
        gate.close()
    finally:
        plane.stop()


def test_without_the_feature_gates_the_plugin_behaves_as_today(gates_off: Cluster) -> None:
    """The server drops bindingConditions and taints: the plugin sees that, publishes neither, leaves an unhealthy
    (tainted) GPU out of its slice, and binds at NodePrepareResources."""
    cluster = gates_off
    cluster.wait("the plugin to notice the dropped fields", lambda: "the API server drops them" in cluster.node.log())
    devices = cluster.devices()
    assert set(devices) == {FIRST, SECOND}
    assert not any("bindingConditions" in d for d in devices.values())
    # An admin enables SR-IOV on the first GPU: unhealthy, so tainted; a server without taints gets no such GPU.
    (cluster.node.sim_root / "sys" / "bus" / "pci" / "devices" / FIRST / "sriov_numvfs").write_text("2\n")
    cluster.wait("the unhealthy GPU left out of the slice", lambda: set(cluster.devices()) == {SECOND})

    cluster.create_pod("plain")
    claim = cluster.scheduled("plain")
    assert _allocated(claim) == devices[SECOND]["name"]
    assert not cluster.checkpoint(), "bound before NodePrepareResources without binding conditions"
    before = cluster.uevents()
    ref = _ref(claim)
    assert cluster.node.kubelet.prepare(DRIVER, [ref])[ref[2]].error == "", cluster.node.log()
    assert cluster.uevents() > before, "NodePrepareResources binds the GPU, as without binding conditions"
    assert cluster.node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}
    cluster.delete_pod("plain")
    (cluster.node.sim_root / "sys" / "bus" / "pci" / "devices" / FIRST / "sriov_numvfs").write_text("0\n")
