"""Binding conditions end to end on the fast tier: the real plugin process, the API-server double, a simulated host.

The test plays the scheduler: it allocates claims whose results carry the devices' binding conditions, as
kube-scheduler copies them, and reads the conditions the plugin sets. The real scheduler's side (waiting in PreBind,
deallocating on failure or timeout) is in tests/cluster/test_binding_real.py.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.dra.bindlabel import LABEL, ClaimLabeler
from cc_gpu.dra.checkpoint import EARLY_BOUND, PREPARE_COMPLETED, Checkpoint
from tests.dra.attested import FAULTS_FILE, attest_config, attested_node, device_of
from tests.dra.harness import DRIVER, NODE, Node, simulated_node
from tests.dra.test_kata_startup import install

CONFIG = "[binding]\nconditions = true\nquarantine_seconds = 600\n"


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    with simulated_node(tmp_path) as n:
        (tmp_path / "plugin.toml").write_text(CONFIG)
        n.extra_args = ["--config", str(tmp_path / "plugin.toml"), "--rescan-seconds", "1"]
        n.start_plugin()
        n.wait_for(lambda: all("bindingConditions" in d for s in n.api.list_resource_slices(DRIVER, NODE)
                               for d in s["spec"]["devices"]), timeout=20)
        yield n
        if n.proc is not None:
            n.stop_plugin(signal.SIGKILL)


def allocate(node: Node, name: str, device: str, config: list[dict[str, Any]] | None = None, *,
             label: bool = True) -> tuple[str, str, str]:
    """A claim allocated and reserved for its pod as kube-scheduler writes it, the device's conditions copied."""
    pod = node.pod(f"vm-{name}")
    claim = node.server.create({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vfio-gpu"}}]}},
    })
    claim["status"] = {
        "allocation": {
            "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": NODE, "device": device,
                                     "bindingConditions": ["VfioReady"], "bindingFailureConditions": ["VfioFailed"]}]},
            "nodeSelector": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE]}]}]},
        },
        "reservedFor": [{"resource": "pods", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}],
    }
    if config:
        claim["status"]["allocation"]["devices"]["config"] = config
    node.server.store.replace(node.server.store_type("resourceclaims"), "default", name, claim, subresource="status")
    if label:  # the cluster's labeler (the pod-gate Deployment) names the node; the plugin watches only those
        assert ClaimLabeler(node.api, DRIVER).offer(node.api.get_resource_claim("default", name))
    return "default", name, claim["metadata"]["uid"]


def conditions(node: Node, ref: tuple[str, str, str]) -> dict[str, dict[str, Any]]:
    claim = node.api.get_resource_claim(ref[0], ref[1])
    return {c["type"]: c for d in (claim.get("status") or {}).get("devices") or [] for c in d.get("conditions") or []}


def entries(node: Node) -> dict[str, Any]:
    return dict(Checkpoint(node.plugin_dir).read())


def uevents(node: Node) -> int:
    log = node.sim_root / ".sim" / "uevents.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def bdf_of(device: str) -> str:
    return device.removeprefix("gpu-").replace("-", ":", 2).replace("-", ".")


def test_bound_before_the_pod_prepare_writes_nothing_and_a_deleted_claim_is_released(node: Node) -> None:
    first, second = node.devices()[:2]
    ref = allocate(node, "a", first)
    node.wait_for(lambda: conditions(node, ref).get("VfioReady", {}).get("status") == "True", timeout=20)
    assert entries(node)[ref[2]].state == EARLY_BOUND
    assert node.driver_of(bdf_of(first)) == "vfio-pci"
    before = uevents(node)
    result = node.kubelet.prepare(DRIVER, [ref])[ref[2]]
    assert result.error == ""
    assert uevents(node) == before, "NodePrepareResources wrote to sysfs although the group was bound"
    assert entries(node)[ref[2]].state == PREPARE_COMPLETED
    assert set(conditions(node, ref)) == {"VfioReady", "Ready"}
    assert node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}

    other = allocate(node, "b", second)
    node.wait_for(lambda: other[2] in entries(node), timeout=20)
    node.delete_claim(other[0], other[1])
    node.wait_for(lambda: other[2] not in entries(node) and node.driver_of(bdf_of(second)) == "nvidia", timeout=20)


def test_the_plugin_watches_only_claims_labelled_with_its_node_unless_told_to_watch_all(tmp_path: Path) -> None:
    """An unlabelled claim is not this node's to bind (the server filters the watch); the labeler's label makes it
    so; `watch_all` (a cluster without the labeler) binds an unlabelled claim too."""
    with simulated_node(tmp_path) as node:
        (tmp_path / "plugin.toml").write_text(CONFIG)
        node.extra_args = ["--config", str(tmp_path / "plugin.toml"), "--rescan-seconds", "1"]
        node.start_plugin()
        first, second = node.devices()[:2]
        ref = allocate(node, "a", first, label=False)
        other = allocate(node, "b", second)
        assert node.api.get_resource_claim("default", "b")["metadata"]["labels"] == {LABEL: NODE}
        node.wait_for(lambda: conditions(node, other).get("VfioReady", {}).get("status") == "True", timeout=20)
        assert ref[2] not in entries(node) and not conditions(node, ref)
        node.stop_plugin(signal.SIGKILL)
        (tmp_path / "plugin.toml").write_text(CONFIG + "watch_all = true\n")
        node.start_plugin()
        node.wait_for(lambda: conditions(node, ref).get("VfioReady", {}).get("status") == "True", timeout=20)
        node.stop_plugin(signal.SIGKILL)


def test_a_restart_rolls_an_early_bind_back_and_binds_again(node: Node) -> None:
    device = node.devices()[0]
    ref = allocate(node, "a", device)
    node.wait_for(lambda: entries(node).get(ref[2]) is not None
                  and entries(node)[ref[2]].state == EARLY_BOUND, timeout=20)
    node.stop_plugin(signal.SIGKILL)
    node.start_plugin()
    assert '"rolled_back": 1' in node.log_path.read_text()
    node.wait_for(lambda: entries(node).get(ref[2]) is not None
                  and entries(node)[ref[2]].state == EARLY_BOUND, timeout=20)
    assert node.driver_of(bdf_of(device)) == "vfio-pci"


def test_a_failing_bind_quarantines_the_gpu_and_says_why(node: Node) -> None:
    device = node.devices()[0]
    node.kernel.set_bind_behaviour(bdf_of(device), "fail")
    ref = allocate(node, "a", device)
    node.wait_for(lambda: "VfioFailed" in conditions(node, ref), timeout=20)
    failed = conditions(node, ref)["VfioFailed"]
    assert (failed["status"], failed["reason"]) == ("True", "BindFailed")
    assert ref[2] not in entries(node)
    assert node.driver_of(bdf_of(device)) == "nvidia"
    (s,) = node.api.list_resource_slices(DRIVER, NODE)
    (taint,) = next(d for d in s["spec"]["devices"] if d["name"] == device)["taints"]
    assert (taint["key"], taint["value"], taint["effect"]) == ("cc-gpu.io/quarantine", "bind-failed", "NoSchedule")
    node.wait_for(lambda: [e["reason"] for e in node.events_for(ref[1])] == ["GpuQuarantined"])  # after the condition


GOOD, NO_VBIOS_RIM = "0000:18:00.0", "0000:3a:00.0"


def test_pre_flight_attestation_before_the_pod_a_missing_rim_quarantines(tmp_path: Path) -> None:
    """Attestation runs in the early bind, before the GPU leaves its host driver: a GPU whose VBIOS RIM is missing
    (strict policy) is quarantined as attestation-rejected and stays with the host; a good GPU's verdict reaches the
    claim and its token the CDI spec at NodePrepareResources, which binds nothing."""
    # Host pre-flight attestation needs GPUs in CC mode off (`attested_node`), which the gate would refuse a
    # confidential pod: the admin waives that check on this node.
    settings = "[binding]\nconditions = true\n[policy]\nrequire_cc_mode = false\n"
    with attested_node(tmp_path, faults={NO_VBIOS_RIM: {"missing_rim": "vbios"}}, settings=settings) as node:
        node.start_plugin()
        node.wait_for(lambda: all("bindingConditions" in d for s in node.api.list_resource_slices(DRIVER, NODE)
                                  for d in s["spec"]["devices"]), timeout=30)
        bad = allocate(node, "bad", device_of(NO_VBIOS_RIM), [attest_config(required=True)])
        node.wait_for(lambda: "VfioFailed" in conditions(node, bad), timeout=30)
        assert conditions(node, bad)["VfioFailed"]["reason"] == "AttestationRejected"
        assert node.driver_of(NO_VBIOS_RIM) == "nvidia"
        (s,) = node.api.list_resource_slices(DRIVER, NODE)
        (taint,) = next(d for d in s["spec"]["devices"] if d["name"] == device_of(NO_VBIOS_RIM))["taints"]
        assert (taint["key"], taint["value"]) == ("cc-gpu.io/quarantine", "attestation-rejected")

        good = allocate(node, "good", device_of(GOOD), [attest_config(required=True)])
        node.wait_for(lambda: conditions(node, good).get("VfioReady", {}).get("status") == "True", timeout=30)
        before = uevents(node)
        assert node.kubelet.prepare(DRIVER, [good])[good[2]].error == ""
        assert uevents(node) == before
        assert conditions(node, good)["Attested"]["status"] == "True"
        spec = json.loads((node.cdi_root / f"cc-gpu.io-vfio_{good[2]}.json").read_text())
        assert any(e.startswith("CC_GPU_ATTESTATION_TOKEN_") for e in spec["devices"][0]["containerEdits"]["env"])
        assert node.kubelet.unprepare(DRIVER, [good]) == {good[2]: ""}
        node.stop_plugin(signal.SIGKILL)


def test_a_rejected_attestation_quarantine_lifts_when_the_gpu_attests_again(tmp_path: Path) -> None:
    """A GPU quarantined for a missing VBIOS RIM stays quarantined while re-attestation after the period still finds
    none; once the RIM is there (the fault gone), the next re-attestation passes and the taint goes."""
    settings = "[policy]\nrequire_cc_mode = false\n[binding]\nconditions = true\nquarantine_seconds = 1\n"
    with attested_node(tmp_path, faults={NO_VBIOS_RIM: {"missing_rim": "vbios"}}, settings=settings) as node:
        node.extra_args += ["--rescan-seconds", "1"]  # the quarantine's checks run on each republish
        node.start_plugin()
        bad = allocate(node, "bad", device_of(NO_VBIOS_RIM), [attest_config(required=True)])
        node.wait_for(lambda: "VfioFailed" in conditions(node, bad), timeout=30)
        device = device_of(NO_VBIOS_RIM)
        assert taints_of(node, device) == [("cc-gpu.io/quarantine", "attestation-rejected")]
        node.wait_for(lambda: "GPU stays quarantined: its cause persists" in node.log_path.read_text(), timeout=30)
        assert taints_of(node, device) == [("cc-gpu.io/quarantine", "attestation-rejected")]
        (node.sim_root / FAULTS_FILE).write_text("{}")
        node.wait_for(lambda: not taints_of(node, device), timeout=30)
        assert "its check passed" in node.log_path.read_text()
        assert node.driver_of(NO_VBIOS_RIM) == "nvidia"
        node.stop_plugin(signal.SIGKILL)


def test_the_early_bind_runs_the_kata_check_for_the_pods_handler(tmp_path: Path) -> None:
    """The node's Kata configuration for the pod's handler (SNP) is kata-deploy's as shipped, which cannot carry a
    GPU into the VM: the early bind refuses the claim with VfioFailed `KataCheckFailed` and the finding, binds
    nothing and quarantines no GPU (the cause is the node's). Once the configuration is fixed, the next claim binds:
    the check runs afresh on every early bind."""
    with simulated_node(tmp_path) as node:
        install(node.sim_root, "-snp")
        (tmp_path / "plugin.toml").write_text(CONFIG)
        node.extra_args = ["--config", str(tmp_path / "plugin.toml"), "--rescan-seconds", "1"]
        node.start_plugin()
        device = node.devices()[0]
        ref = allocate(node, "a", device)
        node.wait_for(lambda: "VfioFailed" in conditions(node, ref), timeout=20)
        failed = conditions(node, ref)["VfioFailed"]
        assert failed["reason"] == "KataCheckFailed"
        assert "kata-qemu-nvidia-gpu-snp" in failed["message"] and "Kata configuration" in failed["message"]
        assert ref[2] not in entries(node) and node.driver_of(bdf_of(device)) == "nvidia"
        (s,) = node.api.list_resource_slices(DRIVER, NODE)
        assert not next(d for d in s["spec"]["devices"] if d["name"] == device).get("taints")
        assert [e["reason"] for e in node.events_for(ref[1])] == ["PrepareRefused"]

        install(node.sim_root, "-snp", fixed=True)
        fixed = allocate(node, "b", device)
        node.wait_for(lambda: conditions(node, fixed).get("VfioReady", {}).get("status") == "True", timeout=20)
        node.stop_plugin(signal.SIGKILL)


def taints_of(node: Node, device: str) -> list[tuple[str, str]]:
    (s,) = node.api.list_resource_slices(DRIVER, NODE)
    found = next((d for d in s["spec"]["devices"] if d["name"] == device), None)
    return [(t["key"], t["value"]) for t in (found or {}).get("taints") or []]


def _quick(node: Node, tmp_path: Path) -> None:
    (tmp_path / "plugin.toml").write_text("[binding]\nconditions = true\nquarantine_seconds = 1\n")
    node.extra_args = ["--config", str(tmp_path / "plugin.toml"), "--rescan-seconds", "1"]
    node.start_plugin()


def test_a_failed_bind_quarantine_lifts_only_when_a_probe_bind_works(tmp_path: Path) -> None:
    """After the period the plugin probes the idle GPU with a bind and unbind: while the bind still fails the taint
    stays (held another period); once it works the taint goes and the GPU is back on its host driver."""
    with simulated_node(tmp_path) as node:
        _quick(node, tmp_path)
        device = node.devices()[0]
        node.kernel.set_bind_behaviour(bdf_of(device), "fail")
        ref = allocate(node, "a", device)
        node.wait_for(lambda: "VfioFailed" in conditions(node, ref), timeout=20)
        assert taints_of(node, device) == [("cc-gpu.io/quarantine", "bind-failed")]
        node.wait_for(lambda: "GPU stays quarantined: its cause persists" in node.log_path.read_text(), timeout=20)
        assert taints_of(node, device) == [("cc-gpu.io/quarantine", "bind-failed")]
        node.kernel.set_bind_behaviour(bdf_of(device), "ok")
        node.wait_for(lambda: not taints_of(node, device), timeout=20)
        assert "its check passed" in node.log_path.read_text()
        assert node.driver_of(bdf_of(device)) == "nvidia"
        node.stop_plugin(signal.SIGKILL)


NIC = "0000:83:00.0"


def test_a_foreign_device_quarantine_lifts_when_the_device_leaves_the_group(tmp_path: Path) -> None:
    """The GPU's group holds a NIC: the early bind fails with ForeignDevice and the GPU is quarantined; the period
    passing does not lift it (nothing changed); the NIC's removal does, as discovery sees it."""
    with simulated_node(tmp_path, topology="shared-group-nic") as node:
        _quick(node, tmp_path)
        (device,) = node.devices()
        ref = allocate(node, "a", device)
        node.wait_for(lambda: "VfioFailed" in conditions(node, ref), timeout=20)
        assert conditions(node, ref)["VfioFailed"]["reason"] == "ForeignDevice"
        assert taints_of(node, device) == [("cc-gpu.io/quarantine", "foreign-device")]
        time.sleep(3)  # three periods: a cause that did not go is not lifted by time
        assert taints_of(node, device) == [("cc-gpu.io/quarantine", "foreign-device")]
        node.kernel.remove_device(NIC)
        node.wait_for(lambda: not taints_of(node, device), timeout=20)
        assert "the foreign device left the group" in node.log_path.read_text()
        node.stop_plugin(signal.SIGKILL)


def test_an_unhealthy_gpu_taint_goes_when_health_recovers(node: Node) -> None:
    """SR-IOV enabled on a GPU makes it unhealthy (discovery's taint); disabling it lifts the taint."""
    device = node.devices()[0]
    numvfs = node.sim_root / "sys" / "bus" / "pci" / "devices" / bdf_of(device) / "sriov_numvfs"
    numvfs.write_text("2\n")  # as the admin's write lands in the simulated sysfs
    node.wait_for(lambda: "cc-gpu.io/unhealthy" in [k for k, _ in taints_of(node, device)], timeout=20)
    numvfs.write_text("0\n")
    node.wait_for(lambda: not taints_of(node, device), timeout=20)
