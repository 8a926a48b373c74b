"""Hostile input against the running plugin process: each bad claim fails alone, typed, and the process stays up.

Also the checkpoint on disk damaged under a running node: the plugin restarts on the previous generation, keeps the
record of the bound devices, and the kubelet's unprepare still gives every device back to its original driver.
"""

from __future__ import annotations

from typing import Any

import pytest

from cc_gpu.dra.checkpoint import Checkpoint
from tests.dra.harness import DRIVER
from tests.reliability.crashnode import CrashNode, PluginDied
from tests.reliability.scenarios import Shared


@pytest.fixture()
def cn(shared: Shared) -> Any:
    node = shared.node("dgx-h100")
    crash_node = CrashNode(node, f"h{shared.runs}")
    assert crash_node.start()
    try:
        yield crash_node
    finally:
        if crash_node.alive():
            crash_node.stop()
        node.kubelet.stop()


def test_each_hostile_claim_fails_alone_and_the_process_stays_up(cn: CrashNode) -> None:
    node = cn.node
    devices = node.devices()
    good = cn.new_claim([devices[0]])
    bad_config = node.claim("h-bad-config", [devices[1]], [node.pod("h-vm-1")], config=[{
        "source": "FromClaim", "requests": [],
        "opaque": {"driver": DRIVER, "parameters": {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig",
                                                    "iommuMode": 7, "extra": {"x": [1, 2]}}}}])
    other_pool = node.claim("h-other-pool", [devices[2]], [node.pod("h-vm-2")], pool="node-b")
    no_device = node.claim("h-no-device", ["gpu-0000-ff-00-0"], [node.pod("h-vm-3")])
    hostile = [
        ("default", "h-bad-config", bad_config[2]),
        ("default", "h-other-pool", other_pool[2]),
        ("default", "h-no-device", no_device[2]),
        ("default", "h-missing", "6f1c0a52-0000-4000-8000-000000000000"),  # no such claim
        ("default", good.name, "not-the-uid"),  # the claim was replaced
        ("default", "x", "../../../etc/passwd"),  # a path where a UID belongs
        ("", "", ""),
        ("default", "n" * 300, "u" * 300),
    ]
    result = node.kubelet.prepare(DRIVER, [good.key, *hostile])
    assert result[good.uid].error == "", result[good.uid].error
    for _, _, uid in hostile:
        error = result[uid].error
        assert error and "internal error" not in error, f"{uid[:20]}: {error!r}"
    assert cn.alive()
    unprepared = node.kubelet.unprepare(DRIVER, [*hostile, good.key])
    assert all(not e for e in unprepared.values()), unprepared
    assert cn.alive()
    cn.check_converged([])
    assert "unexpected error" not in node.log_path.read_text()


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "bit-flipped", "deleted-mid-update"])
def test_damaged_checkpoint_keeps_the_record_of_bound_devices(cn: CrashNode, damage: str) -> None:
    devices = cn.node.devices()
    first = cn.new_claim([devices[0]])
    second = cn.new_claim([devices[1], devices[2]])
    cn.prepare(first)
    cn.prepare(second)  # the newest update: the previous generation lacks it
    cn.node.stop_plugin()
    path = Checkpoint(cn.node.plugin_dir).path
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 3])
    elif damage == "zeroed":
        path.write_bytes(bytes(len(raw)))
    elif damage == "bit-flipped":
        path.write_bytes(raw[:200] + bytes([raw[200] ^ 0x10]) + raw[201:])
    else:
        path.unlink()  # what a kill between the two renames of an update leaves
    assert cn.start()
    if damage != "deleted-mid-update":
        # The surviving generation has the newest claim only as PrepareStarted; it may have completed and be in
        # use, so startup leaves its devices alone (after a crash mid-update it is rolled back as usual).
        assert all("vfio" in (cn.node.driver_of(_bdf(d)) or "") for d in devices[1:3])
    assert cn.prepare(first)  # answered from the surviving generation, without touching the host
    cn.unprepare(second)
    cn.check_converged([first])
    cn.unprepare(first)
    cn.check_converged([])
    if damage != "deleted-mid-update":
        assert list(cn.node.plugin_dir.glob("checkpoint.json.corrupt-*")), "the damaged file is kept for the admin"


def test_damaged_checkpoint_after_a_crash_mid_prepare(cn: CrashNode) -> None:
    """The previous generation lacks the claim entirely; the host layer's bind record finds its group."""
    devices = cn.node.devices()
    first = cn.new_claim([devices[0]])
    cn.prepare(first)
    cn.stop()
    assert cn.start(crash_at="prepare-after-bind-group:1")
    second = cn.new_claim([devices[1], devices[2]])
    with pytest.raises(PluginDied):
        cn.prepare(second)
    path = Checkpoint(cn.node.plugin_dir).path
    path.write_bytes(path.read_bytes()[:-40])
    assert cn.start()
    assert "vfio" in (cn.node.driver_of(_bdf(devices[1])) or ""), "startup must not release a group it cannot place"
    cn.unprepare(second)  # the pod is gone: the kubelet unprepares what it never heard was prepared
    cn.check_converged([first])
    cn.unprepare(first)
    cn.check_converged([])


def _bdf(device: str) -> str:
    """`gpu-0000-18-00-0` -> `0000:18:00.0`."""
    parts = device.removeprefix("gpu-").split("-")
    return f"{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}"
