"""The plugin's own CDI specs, read by the Go CDI consumers: the real plugin process prepares claims on a simulated
node, and each consumer (Kata's CDI library v0.6.0, containerd's v1.1.0, and Kata's own `config.WithCDI`) resolves the
CDI ids it returned to the kubelet and the pod annotation the pod-gate controller sets, for iommufd specs (the default
for confidential pods) and legacy ones (an explicit `iommuMode: legacy` on a Kata older than 3.26)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cdi.consumer import Consumer, ConsumerError, device_paths
from tests.dra.conftest import node  # noqa: F401  (the simulated node fixture)
from tests.dra.harness import DRIVER, Node, opaque


def spec_nodes(cdi_root: Path) -> list[str]:
    nodes = []
    for path in sorted(cdi_root.glob("*.json")):
        for device in json.loads(path.read_text())["devices"]:
            nodes += [n["hostPath"] if "hostPath" in n else n["path"] for n in device["containerEdits"]["deviceNodes"]]
    return nodes


LEGACY = [{"source": "FromClaim", "opaque": {"driver": DRIVER, "parameters": opaque(iommuMode="legacy")}}]
MODES: dict[str, tuple[tuple[str, ...], list[dict[str, Any]] | None, str]] = {
    "iommufd": ((), None, "/dev/vfio/devices/vfio"),
    "legacy": (("--kata-version", "3.25.0"), LEGACY, "/dev/vfio/1"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_pod_annotation_and_claim_ids_resolve_to_the_prepared_gpus(node: Node, consumer: Consumer,  # noqa: F811
                                                                   kata_shim: Consumer, mode: str) -> None:
    args, config, prefix = MODES[mode]
    node.start_plugin(*args)
    devices = node.devices()
    vm = node.pod("vm-annotated", cdi_device=True)
    uid = vm["metadata"]["uid"]
    annotations = vm["metadata"]["annotations"]
    first = node.claim("gpu-a", [devices[0]], [vm], config=config)
    second = node.claim("gpu-b", [devices[1]], [vm], config=config)
    results = node.kubelet.prepare(DRIVER, [first, second])
    assert {uid: r.error for uid, r in results.items()} == {first[2]: "", second[2]: ""}
    claim_ids = [i for r in results.values() for d in r.devices for i in d[3]]
    assert (node.cdi_root / f"cc-gpu.io-vfio_pod-{uid}.json").exists()
    nodes = spec_nodes(node.cdi_root)
    assert nodes and all(n.startswith(prefix) for n in nodes), nodes

    sandbox = consumer.inject(node.cdi_root, annotations=annotations, nodes=nodes)
    containers = consumer.inject(node.cdi_root, devices=claim_ids, nodes=nodes)
    # Kata's own annotation handling (config.WithCDI, Kata's code at its pinned commit) resolves the same nodes.
    shim = kata_shim.inject(node.cdi_root, annotations=annotations, nodes=nodes)
    assert sorted(device_paths(shim)) == sorted(device_paths(sandbox))
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
