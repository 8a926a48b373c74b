"""The plugin process across crashes, restarts, reboots, kubelet versions, rolling updates and hardware changes."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import grpc
import pytest

from cc_gpu.dra.kubelet import KubeletDouble
from cc_gpu.dra.proto import dra_health_v1alpha1_pb2 as health_pb
from cc_gpu.dra.proto import dra_health_v1alpha1_pb2_grpc as health_grpc
from cc_gpu.dra.proto import grpc_health_v1_pb2 as probe_pb
from cc_gpu.dra.proto import grpc_health_v1_pb2_grpc as probe_grpc
from tests.dra.harness import DRIVER, NODE, Node


def _bdf(device: str) -> str:
    parts = device.removeprefix("gpu-").split("-")
    return f"{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}"


def _checkpoint_claims(node: Node) -> dict[str, dict[str, object]]:
    envelope = json.loads((node.plugin_dir / "checkpoint.json").read_text())
    return dict(json.loads(envelope["data"])["claims"])


@pytest.mark.parametrize("point", ["prepare-after-started", "prepare-after-bind", "prepare-after-cdi"])
def test_crash_mid_prepare_is_rolled_back_at_startup(node: Node, point: str) -> None:
    node.start_plugin(env={"CC_GPU_CRASH_AT": point})
    devs = node.devices()
    claim = node.vm_pod_claim([devs[0]])
    with pytest.raises(grpc.RpcError):
        node.kubelet.prepare(DRIVER, [claim])
    assert node.proc is not None
    assert node.proc.wait(timeout=10) == -9
    node.proc = None
    assert _checkpoint_claims(node)[claim[2]]["state"] == "PrepareStarted"
    node.start_plugin()
    assert node.driver_of(_bdf(devs[0])) == "nvidia", f"crash at {point}: the half-bound group is restored"
    assert claim[2] not in _checkpoint_claims(node)
    assert not list(node.cdi_root.glob("*.json"))
    # The kubelet retries and now succeeds.
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""


def test_startup_reconciliation_of_orphans_and_other_boots(node: Node) -> None:
    node.start_plugin()
    devs = node.devices()
    claim = node.vm_pod_claim([devs[0]])
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    node.stop_plugin()
    orphan = node.cdi_root / "cc-gpu.io-vfio_deadbeef-0000-0000-0000-000000000000.json"
    orphan.write_text('{"cdiVersion": "0.5.0", "kind": "cc-gpu.io/vfio", "devices": []}')
    foreign = node.cdi_root / "nvidia.com-gpu.json"
    foreign.write_text("{}")
    node.start_plugin()
    assert not orphan.exists(), "our spec without a checkpoint entry is removed"
    assert foreign.exists(), "other vendors' specs are never touched"
    assert claim[2] in _checkpoint_claims(node)
    node.stop_plugin()
    # Reboot: a new boot id; the kernel dropped every binding (simulated by restoring the drivers here).
    boot_id = node.sim_root / "proc/sys/kernel/random/boot_id"
    boot_id.write_text("00000000-0000-0000-0000-000000000002\n")
    node.start_plugin()
    assert claim[2] not in _checkpoint_claims(node)
    assert not (node.cdi_root / f"cc-gpu.io-vfio_{claim[2]}.json").exists()


def test_old_kubelet_speaks_v1beta1(node: Node) -> None:
    node.kubelet.stop()
    node.kubelet = KubeletDouble(node.root / "registry", speaks=("v1beta1.DRAPlugin",))
    node.kubelet.start()
    node.start_plugin()
    assert node.kubelet.plugins[DRIVER].version == "v1beta1.DRAPlugin"
    devs = node.devices()
    claim = node.vm_pod_claim([devs[2]])
    ((_, pool, device, ids),) = node.kubelet.prepare(DRIVER, [claim])[claim[2]].devices
    assert (pool, device) == (NODE, devs[2])
    assert ids == (f"cc-gpu.io/vfio={claim[2]}-{devs[2]}",)


def test_kubelet_refuses_a_plugin_it_cannot_speak(node: Node) -> None:
    node.kubelet.stop()
    node.kubelet = KubeletDouble(node.root / "registry", speaks=("v1alpha4.DRAPlugin",))
    node.kubelet.start()
    node.start_plugin(wait=False)
    # A GetInfo that fails before the plugin listens is recorded and retried, as the kubelet's reconciler does;
    # wait for the answer that counts: the version refusal.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
        "none of the versions" in reason for reason in node.kubelet.refused.values()
    ):
        time.sleep(0.05)
    (reason,) = node.kubelet.refused.values()
    assert "none of the versions" in reason
    node.wait_for(lambda: "the kubelet refused registration" in node.log_path.read_text())


def test_rolling_update_socket_names(node: Node) -> None:
    node.start_plugin("--pod-uid", "3c1f")
    assert (node.plugin_dir / "dra-3c1f.sock").is_socket()
    assert (node.root / "registry" / f"{DRIVER}-3c1f-reg.sock").is_socket()
    assert oct((node.plugin_dir / "dra-3c1f.sock").stat().st_mode & 0o777) == "0o600"
    node.stop_plugin()
    assert not (node.plugin_dir / "dra-3c1f.sock").exists()


@pytest.mark.parametrize(
    ("name", "knob", "message"),
    [
        ("no TEE on the node", lambda k, bdf: k.set_tee(False, False), "no TEE enabled"),
        ("GPU CC mode off", lambda k, bdf: k.set_cc_mode(bdf, "off"), "CC mode is not on/ppcie"),
    ],
)
def test_confidential_handler_needs_tee_and_cc_mode(node: Node, name: str, knob, message: str) -> None:  # type: ignore[no-untyped-def]
    node.start_plugin("--rescan-seconds", "0.2")
    devs = node.devices()
    knob(node.kernel, _bdf(devs[0]))
    if "CC mode" in message:
        node.wait_for(lambda: _slice_attr(node, devs[0], "ccMode") == "off")
    claim = node.vm_pod_claim([devs[0]])
    assert message in node.kubelet.prepare(DRIVER, [claim])[claim[2]].error, name
    assert node.driver_of(_bdf(devs[0])) == "nvidia"


def _slice_attr(node: Node, device: str, attr: str) -> object:
    (s,) = node.api.list_resource_slices(DRIVER, NODE)
    (d,) = [d for d in s["spec"]["devices"] if d["name"] == device]
    return next(iter(d["attributes"][attr].values()))


def test_slices_follow_hardware_and_stay_quiet(node: Node) -> None:
    node.start_plugin("--rescan-seconds", "0.2")
    devs = node.devices()
    node.server.reset_audit()
    time.sleep(1.0)
    assert node.server.writes(resource="resourceslices") == 0, "no API write when nothing changed"
    node.kernel.remove_device(_bdf(devs[7]))
    node.wait_for(lambda: len(node.devices()) == 7)
    (s,) = node.api.list_resource_slices(DRIVER, NODE)
    assert s["spec"]["pool"]["generation"] == 2


def test_health_stream(node: Node) -> None:
    node.start_plugin()
    with grpc.insecure_channel(f"unix://{node.plugin_dir / 'dra.sock'}") as channel:
        stream = health_grpc.DRAResourceHealthStub(channel).NodeWatchResources(  # type: ignore[no-untyped-call]
            health_pb.NodeWatchResourcesRequest(), timeout=5
        )
        first = next(stream)
        assert len(first.devices) == 8
        assert {d.health for d in first.devices} == {health_pb.HEALTHY}
        assert {d.device.pool_name for d in first.devices} == {NODE}
        stream.cancel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_logs_and_liveness(node: Node) -> None:
    metrics_port, probe_port = _free_port(), _free_port()
    node.start_plugin("--metrics-port", str(metrics_port), "--probe-port", str(probe_port))
    devs = node.devices()
    good = node.vm_pod_claim([devs[0]])
    bad = node.vm_pod_claim([devs[1]], runtime_class="runc")
    node.kubelet.prepare(DRIVER, [good, bad])
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
        text = resp.read().decode()
    assert 'cc_gpu_dra_operations_total{op="prepare",result="ok"} 1.0' in text
    assert 'cc_gpu_dra_errors_total{op="prepare",reason="runtime-class"} 1.0' in text
    assert "cc_gpu_dra_prepared_devices 1.0" in text
    assert 'cc_gpu_dra_operation_seconds_count{op="prepare"} 2.0' in text
    with grpc.insecure_channel(f"127.0.0.1:{probe_port}") as channel:
        stub = probe_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        assert stub.Check(probe_pb.HealthCheckRequest(), timeout=5).status == probe_pb.HealthCheckResponse.SERVING
    lines = [json.loads(line) for line in node.log_path.read_text().splitlines()]
    assert any(rec.get("claim_uid") == good[2] and rec["msg"] == "prepared" for rec in lines)
    assert any(rec.get("claim_uid") == bad[2] and rec["msg"] == "prepare failed" for rec in lines)


@pytest.mark.parametrize(
    ("name", "flags", "label", "count"),
    [
        ("by PCI address", ["--select-pci", "0000:18:00.0,0000:2a:00.0"], None, 2),
        ("by node label", ["--select-label", "cc-gpu.io/passthrough"], "18-00-0_0000-2a-00-0_3a-00-0", 3),
        ("label missing: nothing", ["--select-label", "cc-gpu.io/other"], "18-00-0", 0),
    ],
)
def test_device_selection(node: Node, name: str, flags: list[str], label: str | None, count: int) -> None:
    if label is not None:
        body = json.dumps({"metadata": {"labels": {"cc-gpu.io/passthrough": label}}}).encode()
        req = urllib.request.Request(f"{node.server.url}/api/v1/nodes/{NODE}", data=body, method="PATCH",
                                     headers={"Content-Type": "application/merge-patch+json"})
        urllib.request.urlopen(req).close()
    node.start_plugin(*flags)
    (s,) = node.api.list_resource_slices(DRIVER, NODE)
    assert len(s["spec"].get("devices") or []) == count, name  # an empty list is not stored (omitempty)


def test_rolling_update_two_instances_share_state(node: Node) -> None:
    """The old and the new plugin pod serve at once; the new one unprepares what the old one prepared."""
    node.start_plugin("--pod-uid", "old")
    devs = node.devices()
    claim = node.vm_pod_claim([devs[0]])
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    seen = node.kubelet.registrations
    new = node.spawn_plugin("--pod-uid", "new")
    try:
        plugin = node.kubelet.wait_registered(DRIVER, timeout=30, after=seen)
        assert plugin.endpoint.endswith("dra-new.sock"), "the kubelet talks to the newest registration"
        assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == "", "the new instance sees the checkpoint"
        assert node.proc is not None
        node.proc.terminate()  # the old pod goes away: no device is unbound
        assert node.proc.wait(timeout=20) == 0
        node.proc = None
        assert node.driver_of(_bdf(devs[0])) == "vfio-pci"
        assert node.kubelet.plugins[DRIVER].endpoint.endswith("dra-new.sock")
        assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}
        assert node.driver_of(_bdf(devs[0])) == "nvidia"
    finally:
        new.terminate()
        new.wait(timeout=20)


def test_prepared_gpu_rebound_behind_our_back_is_unhealthy(node: Node) -> None:
    node.start_plugin()
    devs = node.devices()
    claim = node.vm_pod_claim([devs[0]])
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    with grpc.insecure_channel(f"unix://{node.plugin_dir / 'dra.sock'}") as channel:
        stream = health_grpc.DRAResourceHealthStub(channel).NodeWatchResources(  # type: ignore[no-untyped-call]
            health_pb.NodeWatchResourcesRequest(), timeout=15
        )
        assert {d.health for d in next(stream).devices} == {health_pb.HEALTHY}
        node.kernel.write(node.sim_root / "sys/bus/pci/drivers/vfio-pci/unbind", _bdf(devs[0]))
        update = next(stream)
        (sick,) = [d for d in update.devices if d.health == health_pb.UNHEALTHY]
        assert sick.device.device_name == devs[0]
        assert "rebound outside the plugin" in sick.message
        stream.cancel()
    node.wait_for(lambda: "taints" in _device(node, devs[0]))
    assert _device(node, devs[0])["taints"][0]["key"] == "cc-gpu.io/unhealthy"


def _device(node: Node, name: str) -> dict[str, object]:
    (s,) = node.api.list_resource_slices(DRIVER, NODE)
    return dict(next(d for d in s["spec"]["devices"] if d["name"] == name))


def test_admin_policy_from_config_file(node: Node) -> None:
    """The TOML file's policy reaches the real process: here the admin also allows the non-CC Kata GPU handler."""
    config = node.root / "plugin.toml"
    config.write_text(
        '[policy]\nallowed_handlers = ["kata-qemu-nvidia-gpu", "kata-qemu-nvidia-gpu-snp"]\n'
        'confidential_handlers = ["kata-qemu-nvidia-gpu-snp"]\n'
    )
    node.server.create({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                        "metadata": {"name": "kata-qemu-nvidia-gpu"}, "handler": "kata-qemu-nvidia-gpu"})
    node.start_plugin("--config", str(config))
    devs = node.devices()
    plain = node.vm_pod_claim([devs[0]], runtime_class="kata-qemu-nvidia-gpu")
    tdx = node.vm_pod_claim([devs[1]], runtime_class="kata-qemu-nvidia-gpu-tdx")
    results = node.kubelet.prepare(DRIVER, [plain, tdx])
    assert results[plain[2]].error == ""
    assert "not allowed" in results[tdx[2]].error, "the admin's list replaced the default"


def test_bad_config_file_stops_the_plugin(node: Node) -> None:
    config = node.root / "plugin.toml"
    config.write_text("[policy]\nallowed_handler = []\n")
    proc = node.spawn_plugin("--config", str(config))
    assert proc.wait(timeout=30) == 2
    assert "config key policy.allowed_handler: unknown" in node.log_path.read_text()


def _share_with(node: Node, claim: tuple[str, str, str], pod: dict[str, object]) -> None:
    """What the scheduler does for a shared claim: add another pod to `reservedFor`; the kubelet then hands it the
    prepared CDI ids without asking the plugin."""
    current = node.api.get_resource_claim(claim[0], claim[1])
    meta = pod["metadata"]
    assert isinstance(meta, dict)
    current["status"]["reservedFor"].append({"resource": "pods", "name": meta["name"], "uid": meta["uid"]})
    node.api.update_resource_claim_status(claim[0], claim[1], current)


def test_a_refused_consumer_added_after_prepare_is_reported(node: Node) -> None:
    """A runc pod added to a prepared claim's reservedFor: the device turns unhealthy through dra-health, a Warning
    Event and an audit line name it, and a repeated prepare now fails the gate."""
    node.start_plugin("--rescan-seconds", "0.2")
    devs = node.devices()
    claim = node.vm_pod_claim([devs[0]])
    first = node.kubelet.prepare(DRIVER, [claim])[claim[2]]
    assert first.error == ""
    with grpc.insecure_channel(f"unix://{node.plugin_dir / 'dra.sock'}") as channel:
        stream = health_grpc.DRAResourceHealthStub(channel).NodeWatchResources(  # type: ignore[no-untyped-call]
            health_pb.NodeWatchResourcesRequest(), timeout=15
        )
        assert {d.health for d in next(stream).devices} == {health_pb.HEALTHY}
        _share_with(node, claim, node.pod("runc-sidecar", "runc"))
        update = next(stream)
        (sick,) = [d for d in update.devices if d.health == health_pb.UNHEALTHY]
        assert sick.device.device_name == devs[0] and "refused consumer" in sick.message
        assert "reserved for 2 pods" in sick.message
        stream.cancel()
    node.wait_for(lambda: any(e["reason"] == "RefusedConsumer" for e in node.events_for(claim[1])))
    assert "refused-consumer" in node.log_path.read_text()
    again = node.kubelet.prepare(DRIVER, [claim])[claim[2]]
    assert "reserved for 2 pods" in again.error, "a repeated prepare re-runs the gate"
    assert node.driver_of(_bdf(devs[0])) == "vfio-pci", "the running VM keeps its GPU; the plugin only reports"


def test_a_second_pod_cannot_take_over_another_pods_cdi_device(node: Node) -> None:
    """Per-pod CDI devices are keyed by the pod UID the plugin verified: a pod whose annotation reuses another pod's
    value is refused and the first pod's spec stays as it was."""
    node.start_plugin()
    devs = node.devices()
    owner = node.pod("vm-first", cdi_device=True)
    value = owner["metadata"]["annotations"]["cdi.k8s.io/cc-gpu"]
    first = node.claim("first", [devs[0]], [owner])
    assert node.kubelet.prepare(DRIVER, [first])[first[2]].error == ""
    path = node.cdi_root / f"cc-gpu.io-vfio_pod-{owner['metadata']['uid']}.json"
    spec = path.read_text()
    thief = node.claim("thief", [devs[1]], [node.pod("vm-thief", annotations={"cdi.k8s.io/cc-gpu": value})])
    error = node.kubelet.prepare(DRIVER, [thief])[thief[2]].error
    assert "not its own" in error
    assert path.read_text() == spec, "the first pod's spec is untouched"
    assert node.driver_of(_bdf(devs[1])) == "nvidia"
