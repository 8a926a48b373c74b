"""The early binder's decisions, computed purely: which claim events mean bind, release or nothing; quarantine time.

The whole path (watch, bind, conditions, the real scheduler's answer) runs in tests/cluster/test_binding_real.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cc_gpu.dra.bindcfg import BindingSettings
from cc_gpu.dra.binding import QUARANTINE_KEY, EarlyBinder, Quarantine, cause_of
from cc_gpu.dra.bindlabel import LABEL, label_patch, node_of
from cc_gpu.dra.checkpoint import EARLY_BOUND, PREPARE_COMPLETED, ClaimEntry
from cc_gpu.dra.errors import GateRefusedError
from cc_gpu.dra.ports import GpuView
from cc_gpu.host.errors import BindFailedError, ForeignDeviceError

DRIVER, NODE, UID = "gpu.cc-gpu.io", "node-a", "uid-1"


@dataclass
class FakeCheckpoint:
    entries: dict[str, ClaimEntry] = field(default_factory=dict)

    def get(self, uid: str) -> ClaimEntry | None:
        return self.entries.get(uid)


@dataclass
class FakeState:
    driver: str = DRIVER
    pool: str = NODE
    boot_id: str = "boot"
    checkpoint: FakeCheckpoint = field(default_factory=FakeCheckpoint)

    def early_bound(self) -> dict[str, ClaimEntry]:
        return {u: e for u, e in self.checkpoint.entries.items() if e.state == EARLY_BOUND}


def claim(*, pool: str = NODE, conditions: bool = True, reserved: bool = True, allocated: bool = True,
          status: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    result = {"request": "gpu", "driver": DRIVER, "pool": pool, "device": "gpu-0"}
    if conditions:
        result |= {"bindingConditions": ["VfioReady"], "bindingFailureConditions": ["VfioFailed"]}
    out: dict[str, Any] = {"metadata": {"uid": UID, "namespace": "t", "name": "c"}, "status": {}}
    if allocated:
        out["status"]["allocation"] = {"devices": {"results": [result]}}
    if reserved:
        out["status"]["reservedFor"] = [{"resource": "pods", "name": "p", "uid": "pod-1"}]
    if status:
        out["status"]["devices"] = [{"driver": DRIVER, "pool": pool, "device": "gpu-0", "conditions": [
            {"type": t, "status": s} for t, s in status]}]
    return out


def binder(state: FakeState) -> EarlyBinder:
    return EarlyBinder(state, None, BindingSettings(conditions=True), Quarantine(10), lambda: None)  # type: ignore[arg-type]


def entry(state: str) -> ClaimEntry:
    return ClaimEntry(UID, "t", "c", state, "boot")


@pytest.mark.parametrize(("name", "event", "body", "stored", "expected"), [
    ("allocated here, reserved, waiting", "ADDED", claim(), None, "bind"),
    ("not yet reserved for its pod", "MODIFIED", claim(reserved=False), None, None),
    ("another node's pool", "ADDED", claim(pool="node-b"), None, None),
    ("a device without binding conditions", "ADDED", claim(conditions=False), None, None),
    ("already failed: the scheduler deallocates", "MODIFIED", claim(status=(("VfioFailed", "True"),)), None, None),
    ("ready and bound here", "MODIFIED", claim(status=(("VfioReady", "True"),)), EARLY_BOUND, None),
    ("ready but the bind was lost in a restart", "MODIFIED", claim(status=(("VfioReady", "True"),)), None, "bind"),
    ("deallocated after an early bind", "MODIFIED", claim(allocated=False), EARLY_BOUND, "release"),
    ("deleted after an early bind", "DELETED", claim(), EARLY_BOUND, "release"),
    ("deleted after the kubelet prepared it", "DELETED", claim(), PREPARE_COMPLETED, None),
    ("deallocated, never bound here", "MODIFIED", claim(allocated=False), None, None),
])
def test_what_a_claim_event_means(name: str, event: str, body: dict[str, Any], stored: str | None,
                                  expected: str | None) -> None:
    state = FakeState()
    if stored:
        state.checkpoint.entries[UID] = entry(stored)
    b = binder(state)
    b._known.add(UID)
    assert b.classify(event, body) == expected, name


def test_quarantine_ends_by_time_and_names_its_cause() -> None:
    now = [100.0]
    q = Quarantine(30, clock=lambda: now[0])
    q.add("gpu-0", cause_of(BindFailedError("probe failed"))[1])
    assert q.taints() == {"gpu-0": ((QUARANTINE_KEY, "bind-failed"),)}
    now[0] += 29
    assert q.taints()
    now[0] += 2
    assert q.taints() == {}


def _view(name: str, members: tuple[str, ...]) -> GpuView:
    return GpuView(name=name, bdf=members[0], gpus=members[:1], members=members, iommu_group=1, vendor_id="10de",
                   device_id="2330", product_name="H100", architecture="Hopper", numa_node=0, pcie_root="pci0000:00",
                   iommufd=True, cc_capable=True, cc_mode="on", driver="nvidia", memory_bytes=None)


@pytest.mark.parametrize("cause", ["bind-failed", "attestation-rejected"])
def test_a_checked_cause_lifts_when_its_check_passes_after_the_period(cause: str) -> None:
    """A failed bind (probe bind) or a rejected attestation (attest again): the check runs only once the period has
    passed; while it fails the GPU stays held another period; once it passes the taint goes."""
    now = [100.0]
    outcome = [False]
    checks: list[float] = []

    def check() -> bool:
        checks.append(now[0])
        return outcome[0]

    q = Quarantine(30, clock=lambda: now[0])
    q.add("gpu-0", cause, recheck=check)
    q.review([])
    assert not checks
    now[0] += 31
    q.review([])
    assert checks == [131.0] and q.taints() == {"gpu-0": ((QUARANTINE_KEY, cause),)}  # failed: held again
    now[0] += 10
    q.review([])
    assert checks == [131.0]  # not due before the new period ends
    now[0] += 21
    outcome[0] = True
    q.review([])
    assert checks == [131.0, 162.0] and q.taints() == {}


def test_a_foreign_device_quarantine_lifts_when_discovery_no_longer_sees_it_never_by_time() -> None:
    now = [0.0]
    q = Quarantine(30, clock=lambda: now[0])
    group = ("0000:82:00.0", "0000:83:00.0", "0000:81:00.0")
    q.add("gpu-0", "foreign-device", members=group)
    now[0] += 3600
    q.review([_view("gpu-0", group)])
    assert q.taints() == {"gpu-0": ((QUARANTINE_KEY, "foreign-device"),)}
    q.review([_view("gpu-0", ("0000:82:00.0", "0000:81:00.0"))])  # the NIC was removed from the group
    assert q.taints() == {}


def test_causes() -> None:
    assert cause_of(ForeignDeviceError("x")) == ("ForeignDevice", "foreign-device")
    assert cause_of(GateRefusedError("x"))[0] == "PreflightFailed"


@pytest.mark.parametrize(("name", "body", "node"), [
    ("allocated here with binding conditions", claim(), NODE),
    ("another node", claim(pool="node-b"), "node-b"),
    ("a device without binding conditions", claim(conditions=False), None),
    ("not allocated", claim(allocated=False), None),
])
def test_which_node_the_labeler_names(name: str, body: dict[str, Any], node: str | None) -> None:
    assert node_of(body, DRIVER) == node
    if node is not None:
        body["metadata"]["resourceVersion"] = "7"
        ops = label_patch(body, node)
        assert ops[:2] == [{"op": "test", "path": "/metadata/uid", "value": UID},
                           {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}]
        assert ops[2] == {"op": "add", "path": "/metadata/labels", "value": {LABEL: node}}
