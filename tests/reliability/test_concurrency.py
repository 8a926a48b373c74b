"""Concurrency against the real plugin process: many claims at once, and the same claim from concurrent kubelet calls.

Every call is bounded (a deadlock fails the test instead of hanging it). Afterwards the node must be consistent: each
group bound at most once, to exactly one claim, and everything back on its original driver after unprepare.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.dra.harness import DRIVER
from tests.reliability.crashnode import ClaimRef, CrashNode
from tests.reliability.scenarios import Shared

BOUND = 90.0  # seconds: far above the slowest honest answer on a loaded machine, far below a hang


@pytest.fixture()
def cn(shared: Shared) -> Any:
    node = shared.node("dgx-h100")
    crash_node = CrashNode(node, f"c{shared.runs}")
    assert crash_node.start()
    try:
        yield crash_node
    finally:
        crash_node.stop()
        node.kubelet.stop()


def _vfio_binds(cn: CrashNode) -> Counter[str]:
    """How many times each function was bound to vfio-pci, from the simulated kernel's uevent log."""
    return Counter(e["DEVPATH"].rsplit("/", 1)[-1] for e in cn.node.kernel.events()
                   if e.get("ACTION") == "bind" and "vfio" in e.get("DRIVER", ""))


def _parallel(n: int, fn: Any, args: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(fn, a) for a in args]
        return [f.result(timeout=BOUND) for f in futures]


def test_many_claims_across_groups_at_once(cn: CrashNode) -> None:
    devices = cn.node.devices()
    claims = [cn.new_claim([d]) for d in devices]
    answers = _parallel(len(claims), cn.prepare, claims)
    for claim, answer, device in zip(claims, answers, devices, strict=True):
        ((_, _, got, cdi_ids),) = answer
        assert got == device and cdi_ids == (f"cc-gpu.io/vfio={claim.uid}-{device}",)
    cn.check_converged(claims)
    assert all(n == 1 for n in _vfio_binds(cn).values()) and len(_vfio_binds(cn)) == len(devices)
    _parallel(len(claims), cn.unprepare, claims)
    cn.check_converged([])


def test_one_request_with_many_claims(cn: CrashNode) -> None:
    devices = cn.node.devices()[:6]
    claims = [cn.new_claim([d]) for d in devices]
    result = cn.node.kubelet.prepare(DRIVER, [c.key for c in claims])
    assert all(r.error == "" for r in result.values()) and set(result) == {c.uid for c in claims}
    cn.check_converged(claims)
    errors = cn.node.kubelet.unprepare(DRIVER, [c.key for c in claims])
    assert errors == {c.uid: "" for c in claims}
    cn.check_converged([])


def test_same_claim_from_concurrent_kubelet_calls(cn: CrashNode) -> None:
    devices = cn.node.devices()
    claim = cn.new_claim(devices[:2])
    answers = _parallel(8, cn.prepare, [claim] * 8)
    assert len(set(answers)) == 1, f"inconsistent answers: {set(answers)}"
    binds = _vfio_binds(cn)
    assert len(binds) == 2 and set(binds.values()) == {1}, f"double bind: {binds}"
    cn.check_converged([claim])
    _parallel(8, cn.unprepare, [claim] * 8)
    cn.check_converged([])


def test_two_claims_for_one_device_never_share_it(cn: CrashNode) -> None:
    device = cn.node.devices()[0]
    claims = [cn.new_claim([device]) for _ in range(4)]

    def attempt(c: ClaimRef) -> str:
        return str(cn.node.kubelet.prepare(DRIVER, [c.key])[c.uid].error)

    errors = _parallel(4, attempt, claims)
    winners = [c for c, e in zip(claims, errors, strict=True) if not e]
    assert len(winners) == 1, f"{len(winners)} claims got the same device: {errors}"
    assert all("held by" in e for e in errors if e), errors
    cn.check_converged(winners)
    _parallel(4, cn.unprepare, claims)  # unpreparing a loser must not touch the winner's device... then all
    cn.check_converged([])


def test_prepare_and_unprepare_racing(cn: CrashNode) -> None:
    devices = cn.node.devices()
    claims = [cn.new_claim([d]) for d in devices[:4]]

    def churn(c: ClaimRef) -> None:
        for _ in range(3):
            cn.prepare(c)
            cn.unprepare(c)

    _parallel(8, churn, claims + claims)
    cn.check_converged([])
