"""The early binder's decisions, computed purely: which claim events mean bind, release or nothing; quarantine time.

The whole path (watch, bind, conditions, the real scheduler's answer) runs in tests/cluster/test_binding_real.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cc_gpu.dra.bindcfg import BindingSettings
from cc_gpu.dra.binding import QUARANTINE_KEY, EarlyBinder, Quarantine, cause_of
from cc_gpu.dra.checkpoint import EARLY_BOUND, PREPARE_COMPLETED, ClaimEntry
from cc_gpu.dra.errors import GateRefusedError
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


def test_causes() -> None:
    assert cause_of(ForeignDeviceError("x")) == ("ForeignDevice", "foreign-device")
    assert cause_of(GateRefusedError("x"))[0] == "PreflightFailed"
