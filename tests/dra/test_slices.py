"""ResourceSlices: limits respected, published like the upstream helper, and no API write when nothing changed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cc_gpu.dra.bindcfg import FAILED_CONDITION, READY_CONDITION
from cc_gpu.dra.ports import GpuView
from cc_gpu.dra.slices import MAX_ATTRS, NodeRef, SlicePublisher, desired_device_lists, device_json
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi

DRIVER = "gpu.cc-gpu.io"


def gpu(i: int, **changes: object) -> GpuView:
    bdf = f"0000:{i:02x}:00.0"
    view = GpuView(
        name="gpu-" + bdf.replace(":", "-").replace(".", "-"), bdf=bdf, gpus=(bdf,), members=(bdf,), iommu_group=i,
        vendor_id="0x10de", device_id="0x2330", product_name="NVIDIA H100 80GB HBM3", architecture="hopper",
        numa_node=0, pcie_root="pci0000:00", iommufd=False, cc_capable=True, cc_mode="on", driver="nvidia",
        memory_bytes=80 * 2**30,
    )
    return replace(view, **changes)  # type: ignore[arg-type]


def test_device_entry_respects_limits() -> None:
    entry = device_json(gpu(1))
    assert len(entry["attributes"]) + len(entry["capacity"]) <= MAX_ATTRS
    assert entry["attributes"]["resource.kubernetes.io/pciBusID"] == {"string": "0000:01:00.0"}
    assert entry["capacity"]["memory"] == {"value": str(80 * 2**30)}
    for value in entry["attributes"].values():
        assert len(value) == 1
        assert len(str(value.get("string", ""))) <= 64


@pytest.mark.parametrize(
    ("name", "devices", "sizes"),
    [
        ("empty node publishes one empty slice", [], [0]),
        ("8 GPUs fit one slice", [gpu(i) for i in range(8)], [8]),
        ("200 GPUs need two slices", [gpu(i) for i in range(200)], [128, 72]),
        ("a tainted device halves the limit", [gpu(i, healthy=False) if i == 0 else gpu(i) for i in range(100)],
         [64, 36]),
    ],
)
def test_slice_split(name: str, devices: list[GpuView], sizes: list[int]) -> None:
    assert [len(s) for s in desired_device_lists(devices)] == sizes, name


def test_binding_conditions_and_quarantine_taints() -> None:
    """Both condition lists or neither (failure conditions count only beside binding conditions, at most 4 each);
    quarantine is NoSchedule, never NoExecute, which would evict a running confidential VM."""
    assert "bindingConditions" not in device_json(gpu(1))
    entry = device_json(gpu(1, binding_conditions=True, taints=(("cc-gpu.io/quarantine", "bind-failed"),)))
    assert entry["bindingConditions"] == [READY_CONDITION]
    assert entry["bindingFailureConditions"] == [FAILED_CONDITION]
    assert entry["taints"] == [{"key": "cc-gpu.io/quarantine", "value": "bind-failed", "effect": "NoSchedule"}]
    both = device_json(gpu(1, healthy=False, taints=(("cc-gpu.io/quarantine", "in-use"),)))
    assert [t["effect"] for t in both["taints"]] == ["NoSchedule", "NoSchedule"]


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[ApiServerDouble, KubernetesApi, NodeRef]]:
    with ApiServerDouble() as server:
        node = server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}})
        api = KubernetesApi(server.write_kubeconfig(tmp_path / "kubeconfig"))
        yield server, api, NodeRef("node-a", node["metadata"]["uid"])
        api.close()


def test_publishing_writes_only_changes(cluster: tuple[ApiServerDouble, KubernetesApi, NodeRef]) -> None:
    server, api, node = cluster
    pub = SlicePublisher(api, DRIVER, node)
    devices = [gpu(i) for i in range(8)]
    assert pub.publish(devices) == 1
    (stored,) = api.list_resource_slices(DRIVER, "node-a")
    assert stored["spec"]["pool"] == {"name": "node-a", "generation": 1, "resourceSliceCount": 1}
    assert stored["metadata"]["ownerReferences"][0]["uid"] == node.uid
    server.reset_audit()
    for _ in range(5):
        assert pub.publish(devices) == 0
    assert server.writes() == 0, "steady state must not write"
    # A GPU changes CC mode: one update, generation bumped.
    devices[3] = replace(devices[3], cc_mode="off")
    assert pub.publish(devices) == 1
    (stored,) = api.list_resource_slices(DRIVER, "node-a")
    assert stored["spec"]["pool"]["generation"] == 2
    # A restarted publisher (new process) sees the same state and writes nothing.
    server.reset_audit()
    assert SlicePublisher(api, DRIVER, node).publish(devices) == 0
    assert server.writes() == 0


def test_growing_and_shrinking_pool(cluster: tuple[ApiServerDouble, KubernetesApi, NodeRef]) -> None:
    _, api, node = cluster
    pub = SlicePublisher(api, DRIVER, node)
    pub.publish([gpu(i) for i in range(130)])
    slices = api.list_resource_slices(DRIVER, "node-a")
    assert sorted(len(s["spec"]["devices"]) for s in slices) == [2, 128]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {2}
    pub.publish([gpu(i) for i in range(4)])
    (only,) = api.list_resource_slices(DRIVER, "node-a")
    assert len(only["spec"]["devices"]) == 4
    assert only["spec"]["pool"]["generation"] == 2


@pytest.mark.parametrize(
    "devices",
    [
        pytest.param([gpu(i) for i in range(8)], id="healthy"),
        pytest.param([gpu(0, healthy=False)] + [gpu(i) for i in range(1, 8)], id="unhealthy-gpu"),
        pytest.param([], id="no-gpu"),
        pytest.param([gpu(i, memory_bytes=80 * 10**9) for i in range(2)], id="decimal-memory"),
    ],
)
def test_steady_state_despite_server_defaulting(
    cluster: tuple[ApiServerDouble, KubernetesApi, NodeRef], devices: list[GpuView]
) -> None:
    """The server drops empty lists, stamps taint times, canonicalises quantities: none of it is a change to write."""
    server, api, node = cluster
    assert SlicePublisher(api, DRIVER, node).publish(devices) == 1
    generation = api.list_resource_slices(DRIVER, "node-a")[0]["spec"]["pool"]["generation"]
    server.reset_audit()
    publisher = SlicePublisher(api, DRIVER, node)  # a restarted plugin: nothing remembered
    for _ in range(3):
        assert publisher.publish(devices) == 0
    assert server.writes() == 0
    assert api.list_resource_slices(DRIVER, "node-a")[0]["spec"]["pool"]["generation"] == generation


def test_a_taint_keeps_its_time_when_the_pool_changes(cluster: tuple[ApiServerDouble, KubernetesApi, NodeRef]) -> None:
    _, api, node = cluster
    publisher = SlicePublisher(api, DRIVER, node)
    publisher.publish([gpu(0, healthy=False), gpu(1)])
    before = api.list_resource_slices(DRIVER, "node-a")[0]["spec"]["devices"][0]["taints"][0]["timeAdded"]
    assert publisher.publish([gpu(0, healthy=False), gpu(1), gpu(2)]) == 1
    after = api.list_resource_slices(DRIVER, "node-a")[0]["spec"]["devices"][0]["taints"][0]["timeAdded"]
    assert after == before


def test_an_unforeseen_server_change_costs_one_write_not_a_loop(
    cluster: tuple[ApiServerDouble, KubernetesApi, NodeRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever else a server version changes on write, the slice it answered with is recognised as ours."""
    import cc_gpu.kube.apiserver.defaults as defaults  # noqa: PLC0415

    server, api, node = cluster
    original = defaults.prepare_for_write

    def stamping(rt: object, old: object, new: dict[str, object], now: str) -> dict[str, object]:
        out = original(rt, old, new, now)  # type: ignore[arg-type]
        if out.get("kind") == "ResourceSlice":
            for device in out["spec"].get("devices") or []:  # type: ignore[union-attr]
                device["allowMultipleAllocations"] = False  # a field a future server might default
        return out

    monkeypatch.setattr("cc_gpu.kube.apiserver.store.prepare_for_write", stamping)
    publisher = SlicePublisher(api, DRIVER, node)
    assert publisher.publish([gpu(0)]) == 1
    server.reset_audit()
    assert publisher.publish([gpu(0)]) == 0
    assert server.writes() == 0
