"""The real plugin process, driven through the kubelet double and the API-server double."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

from tests.cdi.schema import validate_cdi
from tests.dra.harness import DRIVER, NODE, Node, opaque


def test_register_publish_prepare_unprepare(node: Node) -> None:
    node.start_plugin()
    plugin = node.kubelet.plugins[DRIVER]
    assert plugin.version == "v1.DRAPlugin"
    assert plugin.versions[:2] == ("v1.DRAPlugin", "v1beta1.DRAPlugin")
    devices = node.devices()
    assert len(devices) == 8
    claim = node.vm_pod_claim([devices[0]])
    result = node.kubelet.prepare(DRIVER, [claim])[claim[2]]
    assert result.error == ""
    ((requests, pool, device, cdi_ids),) = result.devices
    assert (requests, pool, device) == (("gpu0",), NODE, devices[0])
    assert cdi_ids == (f"cc-gpu.io/vfio={claim[2]}-{devices[0]}",)
    spec_path = node.cdi_root / f"cc-gpu.io-vfio_{claim[2]}.json"
    spec = json.loads(spec_path.read_text())
    validate_cdi(spec)
    bdf = "0000:" + devices[0].removeprefix("gpu-0000-")[:2] + ":00.0"
    assert node.driver_of(bdf) == "vfio-pci"
    # The claim's status records a Ready condition for the device.
    status = node.api.get_resource_claim(claim[0], claim[1])["status"]
    (dev_status,) = status["devices"]
    assert (dev_status["driver"], dev_status["device"]) == (DRIVER, devices[0])
    assert dev_status["conditions"][0]["type"] == "Ready"
    resets = node.kernel.reset_count(bdf)
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}
    assert node.driver_of(bdf) == "nvidia"
    assert node.kernel.reset_count(bdf) == resets + 1, "the function is reset before it goes back to the host"
    assert not spec_path.exists()
    assert node.stop_plugin() == 0
    assert not (node.plugin_dir / "dra.sock").exists()


def _bdf(device: str) -> str:
    """gpu-0000-18-00-0 -> 0000:18:00.0"""
    parts = device.removeprefix("gpu-").split("-")
    return f"{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}"


def _unallocated(node: Node) -> tuple[str, str, str]:
    claim = node.server.create({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "pending", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vfio-gpu"}}]}},
    })
    return "default", "pending", claim["metadata"]["uid"]


def test_each_claim_fails_alone_with_a_clear_reason(node: Node) -> None:
    """One request carries a good claim and every kind of bad one; each bad one fails alone, naming why."""
    node.start_plugin()
    devs = node.devices()
    vm = node.pod("vm-x")
    other = node.pod("vm-y")
    runc_pod = node.pod("plain", runtime_class="runc")
    no_rc_pod = node.pod("no-rc", runtime_class=None)
    missing_rc_pod = node.pod("ghost-rc", runtime_class="kata-qemu-nvidia-gpu-snp-missing")
    good = node.claim("good", [devs[0]], [vm])
    cases = {
        "malformed config": (
            node.claim("bad-config", [devs[1]], [node.pod("p1")], config=[
                {"source": "FromClaim", "opaque": {"driver": DRIVER, "parameters": opaque(iommuMod="legacy")}}]),
            "claim config[0].parameters.iommuMod: unknown field",
        ),
        "other driver only": (
            node.claim("other-driver", [devs[2]], [node.pod("p2")], driver="gpu.nvidia.com"),
            "no devices allocated by driver gpu.cc-gpu.io",
        ),
        "unknown device": (
            node.claim("unknown-dev", ["gpu-0000-ff-00-0"], [node.pod("p3")]),
            "device gpu-0000-ff-00-0 is not a device of this node's pool",
        ),
        "runc pod": (node.claim("runc", [devs[3]], [runc_pod]), "handler 'runc', which is not allowed"),
        "no runtimeClassName": (node.claim("no-rc", [devs[4]], [no_rc_pod]), "has no runtimeClassName"),
        "missing RuntimeClass": (node.claim("ghost-rc", [devs[5]], [missing_rc_pod]), "does not exist"),
        "admin access": (
            node.claim("admin", [devs[6]], [node.pod("p4")], admin_access=True), "monitoring access",
        ),
        "two pods": (node.claim("two-pods", [devs[7]], [other, node.pod("p5")]), "a VFIO GPU goes to one VM"),
        "missing pod": (
            node.claim("gone-pod", [devs[7]], [], reserved_for=[{"resource": "pods", "name": "nope", "uid": "u"}]),
            "pod default/nope in reservedFor does not exist",
        ),
        "claim not found": (("default", "never-created", "00000000-0000-0000-0000-000000000000"), "not found"),
        "claim replaced (UID differs)": ((good[0], good[1], "11111111-2222-3333-4444-555555555555"), "was replaced"),
        "not allocated": (_unallocated(node), "claim is not allocated"),
    }
    results = node.kubelet.prepare(DRIVER, [good] + [c for c, _ in cases.values()])
    assert results[good[2]].error == ""
    assert node.driver_of(_bdf(devs[0])) == "vfio-pci"
    for name, (claim, message) in cases.items():
        assert message in results[claim[2]].error, (name, results[claim[2]].error)
    for d in devs[1:]:
        assert node.driver_of(_bdf(d)) == "nvidia", "nothing is bound for a refused claim"
    assert sorted(p.name for p in node.cdi_root.iterdir()) == [f"cc-gpu.io-vfio_{good[2]}.json"]
    # The refusal is explained on the claim as a Kubernetes Event.
    (event,) = node.events_for("runc")
    assert (event["reason"], event["type"]) == ("PrepareRefused", "Warning")
    assert "handler 'runc'" in event["message"]


def test_prepare_is_idempotent_and_survives_restart(node: Node) -> None:
    node.start_plugin()
    devs = node.devices()
    claim = node.vm_pod_claim([devs[0], devs[1]])
    first = node.kubelet.prepare(DRIVER, [claim])[claim[2]]
    assert first.error == ""
    events_before = len(node.kernel.events())
    again = node.kubelet.prepare(DRIVER, [claim])[claim[2]]
    assert again == first
    assert len(node.kernel.events()) == events_before, "a repeated prepare must not touch the host"
    # SIGTERM: the plugin exits, the VM's devices stay bound.
    assert node.stop_plugin() == 0
    assert node.driver_of(_bdf(devs[0])) == "vfio-pci"
    node.start_plugin()
    assert node.driver_of(_bdf(devs[0])) == "vfio-pci", "a restart never unbinds a prepared device"
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]] == first
    # The claim is deleted before unprepare: the checkpoint is enough.
    node.delete_claim(claim[0], claim[1])
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}
    assert node.driver_of(_bdf(devs[0])) == "nvidia"
    assert node.driver_of(_bdf(devs[1])) == "nvidia"
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}, "unknown claims are a no-op"


def test_ctrl_c_stops_the_plugin_with_exit_130_and_devices_bound(node: Node) -> None:
    """SIGINT (a person's Ctrl-C) stops the plugin like SIGTERM, but exits 130 as every command does after Ctrl-C."""
    node.start_plugin()
    devs = node.devices()
    claim = node.vm_pod_claim([devs[0]])
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    assert node.stop_plugin(signal.SIGINT) == 130
    assert node.driver_of(_bdf(devs[0])) == "vfio-pci"
    assert "Traceback" not in node.log_path.read_text()


def test_pod_annotation_spec_for_released_kata(node: Node) -> None:
    """A pod annotated `cdi.k8s.io/cc-gpu: cc-gpu.io/vfio=pod-<its uid>` gets a per-pod spec with all its claims'
    nodes."""
    node.start_plugin()
    devs = node.devices()
    vm = node.pod("vm-annotated", cdi_device=True)
    uid = vm["metadata"]["uid"]
    a = node.claim("a", [devs[0]], [vm])
    b = node.claim("b", [devs[1]], [vm])
    pod_spec = node.cdi_root / f"cc-gpu.io-vfio_pod-{uid}.json"
    assert node.kubelet.prepare(DRIVER, [a])[a[2]].error == ""
    spec = json.loads(pod_spec.read_text())
    validate_cdi(spec)
    assert spec["devices"][0]["name"] == f"pod-{uid}"
    assert len(spec["devices"][0]["containerEdits"]["deviceNodes"]) == 1
    assert node.kubelet.prepare(DRIVER, [b])[b[2]].error == ""
    assert len(json.loads(pod_spec.read_text())["devices"][0]["containerEdits"]["deviceNodes"]) == 2
    node.kubelet.unprepare(DRIVER, [a])
    assert len(json.loads(pod_spec.read_text())["devices"][0]["containerEdits"]["deviceNodes"]) == 1
    node.kubelet.unprepare(DRIVER, [b])
    assert not pod_spec.exists()


def test_two_claims_on_one_group_serialise(node: Node) -> None:
    """Two claims allocated the same GPU (a scheduler bug) arrive at once: one wins, the other fails cleanly."""
    node.start_plugin()
    devs = node.devices()
    node.kernel.set_default_bind_delay(0.3)
    a = node.vm_pod_claim([devs[0]])
    b = node.vm_pod_claim([devs[0]])
    with ThreadPoolExecutor(2) as pool:
        ra, rb = pool.map(lambda c: node.kubelet.prepare(DRIVER, [c])[c[2]], [a, b])
    outcomes = sorted([bool(ra.error), bool(rb.error)])
    assert outcomes == [False, True], (ra, rb)
    loser, winner = (a, b) if ra.error else (b, a)
    assert "held by" in (ra.error or rb.error)
    assert node.driver_of(_bdf(devs[0])) == "vfio-pci"
    assert node.kubelet.unprepare(DRIVER, [loser]) == {loser[2]: ""}
    assert node.driver_of(_bdf(devs[0])) == "vfio-pci", "the loser's cleanup never touches the winner's group"
    assert node.kubelet.unprepare(DRIVER, [winner]) == {winner[2]: ""}
    assert node.driver_of(_bdf(devs[0])) == "nvidia"


def test_pod_spec_holds_every_claim_prepared_in_one_request(node: Node) -> None:
    node.start_plugin()
    devs = node.devices()
    vm = node.pod("vm-two", cdi_device=True)
    claims = [node.claim(f"two-{i}", [devs[i]], [vm]) for i in range(4)]
    results = node.kubelet.prepare(DRIVER, claims)
    assert all(not r.error for r in results.values())
    spec = json.loads((node.cdi_root / f"cc-gpu.io-vfio_pod-{vm['metadata']['uid']}.json").read_text())
    assert len(spec["devices"][0]["containerEdits"]["deviceNodes"]) == 4


def test_prepare_applies_its_own_conditions_and_keeps_everyone_elses(node: Node) -> None:
    """Ready is applied to this driver's device entry; a condition another writer put there stays, the allocation
    is never sent back, and the claim is never PUT."""
    node.start_plugin()
    devices = node.devices()
    claim = node.vm_pod_claim([devices[0]])
    other = {"type": "Bound", "status": "True", "reason": "BindingReady", "message": "",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
    body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": claim[1], "namespace": claim[0]},
            "status": {"devices": [{"driver": DRIVER, "pool": NODE, "device": devices[0], "conditions": [other]}]}}
    node.api.apply_resource_claim_status(claim[0], claim[1], body, field_manager=f"{DRIVER}/binding")
    allocation = node.api.get_resource_claim(claim[0], claim[1])["status"]["allocation"]
    node.server.reset_audit()
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    stored = node.api.get_resource_claim(claim[0], claim[1])["status"]
    (entry,) = stored["devices"]
    assert sorted(c["type"] for c in entry["conditions"]) == ["Bound", "Ready"]
    assert stored["allocation"] == allocation
    writes = [(e.verb, e.resource, e.subresource) for e in node.server.audit if e.resource == "resourceclaims"
              and e.verb != "get"]
    assert writes == [("patch", "resourceclaims", "status")]
