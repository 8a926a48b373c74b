"""The plugin's own CDI specs, read by the Go CDI consumer: the real plugin process prepares claims on a simulated
node, and the consumer resolves the CDI ids it returned to the kubelet and the pod annotation the pod-gate controller
sets."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cdi.consumer import Consumer, ConsumerError, device_paths
from tests.dra.conftest import node  # noqa: F401  (the simulated node fixture)
from tests.dra.harness import DRIVER, Node


def spec_nodes(cdi_root: Path) -> list[str]:
    nodes = []
    for path in sorted(cdi_root.glob("*.json")):
        for device in json.loads(path.read_text())["devices"]:
            nodes += [n["hostPath"] if "hostPath" in n else n["path"] for n in device["containerEdits"]["deviceNodes"]]
    return nodes


def test_pod_annotation_and_claim_ids_resolve_to_the_prepared_gpus(node: Node, consumer: Consumer) -> None:  # noqa: F811
    node.start_plugin()
    devices = node.devices()
    vm = node.pod("vm-annotated", cdi_device=True)
    uid = vm["metadata"]["uid"]
    annotations = vm["metadata"]["annotations"]
    first = node.claim("gpu-a", [devices[0]], [vm])
    second = node.claim("gpu-b", [devices[1]], [vm])
    results = node.kubelet.prepare(DRIVER, [first, second])
    assert {uid: r.error for uid, r in results.items()} == {first[2]: "", second[2]: ""}
    claim_ids = [i for r in results.values() for d in r.devices for i in d[3]]
    assert (node.cdi_root / f"cc-gpu.io-vfio_pod-{uid}.json").exists()
    nodes = spec_nodes(node.cdi_root)

    sandbox = consumer.inject(node.cdi_root, annotations=annotations, nodes=nodes)
    containers = consumer.inject(node.cdi_root, devices=claim_ids, nodes=nodes)
    groups = {p for p in device_paths(sandbox) if p != "/dev/vfio/vfio"}
    assert len(groups) == 2  # one node per GPU's IOMMU group (or iommufd device)
    assert sorted(device_paths(sandbox)) == sorted(device_paths(containers))

    assert node.kubelet.unprepare(DRIVER, [first, second]) == {first[2]: "", second[2]: ""}
    assert list(node.cdi_root.glob("*.json")) == []
    try:
        consumer.inject(node.cdi_root, annotations=annotations, nodes=nodes)
    except ConsumerError as e:
        assert "unresolvable CDI devices" in str(e)
    else:
        raise AssertionError("the pod device resolved after unprepare")
