"""The real plugin process, driven through the kubelet double and the API-server double."""

from __future__ import annotations

import json

from tests.dra.cdischema import validate_cdi
from tests.dra.harness import DRIVER, NODE, Node


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
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}
    assert node.driver_of(bdf) == "nvidia"
    assert not spec_path.exists()
    assert node.stop_plugin() == 0
    assert not (node.plugin_dir / "dra.sock").exists()
