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


def test_rolling_update_two_processes_one_node(shared: Shared) -> None:
    """During a DaemonSet rolling update two plugin processes serve one node: still one bind per function and one
    owner per group, whichever process each kubelet call reaches."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    import grpc  # noqa: PLC0415

    from cc_gpu.dra.proto import dra_v1_pb2 as pb  # noqa: PLC0415
    from cc_gpu.dra.proto import dra_v1_pb2_grpc as pb_grpc  # noqa: PLC0415
    from tests.dra.harness import NODE, REPO  # noqa: PLC0415

    node = shared.node("dgx-h100")
    cn = CrashNode(node, f"u{shared.runs}")
    node.extra_args = ["--pod-uid", "old"]
    assert cn.start()
    args = [sys.executable, "-m", "cc_gpu", "plugin", "--node-name", NODE, "--sim", node.topology,
            "--sim-root", str(node.sim_root), "--kubeconfig", str(node.root / "kubeconfig"),
            "--plugin-dir", str(node.plugin_dir), "--registry-dir", str(node.kubelet.registry_dir),
            "--cdi-root", str(node.cdi_root), "--pod-uid", "new"]
    with node.log_path.open("ab") as log:
        new = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                               stderr=log)
    channels = []
    try:
        deadline = time.monotonic() + 30
        while not (node.plugin_dir / "dra-new.sock").exists():
            assert time.monotonic() < deadline and new.poll() is None, node.log_path.read_text()[-2000:]
            time.sleep(0.05)
        stubs = []
        for name in ("old", "new"):
            channel = grpc.insecure_channel(f"unix://{node.plugin_dir / f'dra-{name}.sock'}")
            channels.append(channel)
            stubs.append(pb_grpc.DRAPluginStub(channel))  # type: ignore[no-untyped-call]

        def prepare(arg: tuple[int, ClaimRef]) -> tuple[str, tuple[str, ...]]:
            i, c = arg
            request = pb.NodePrepareResourcesRequest(claims=[pb.Claim(namespace=c.namespace, name=c.name, uid=c.uid)])
            r = stubs[i % 2].NodePrepareResources(request, timeout=BOUND).claims[c.uid]
            return r.error, tuple(cid for d in r.devices for cid in d.cdi_device_ids)

        def unprepare(arg: tuple[int, ClaimRef]) -> str:
            i, c = arg
            request = pb.NodeUnprepareResourcesRequest(
                claims=[pb.Claim(namespace=c.namespace, name=c.name, uid=c.uid)])
            return str(stubs[i % 2].NodeUnprepareResources(request, timeout=BOUND).claims[c.uid].error)

        devices = node.devices()
        same = cn.new_claim(devices[:2])
        answers = _parallel(8, prepare, [(i, same) for i in range(8)])
        assert len(set(answers)) == 1 and answers[0][0] == "", answers
        rivals = [cn.new_claim([devices[2]]) for _ in range(4)]
        errors = [e for e, _ in _parallel(4, prepare, list(enumerate(rivals)))]
        winners = [c for c, e in zip(rivals, errors, strict=True) if not e]
        assert len(winners) == 1, errors
        binds = _vfio_binds(cn)
        assert len(binds) == 3 and set(binds.values()) == {1}, f"double bind: {binds}"
        cn.check_converged([same, *winners])
        assert not [e for e in _parallel(8, unprepare, [(i, c) for i, c in enumerate([same] * 4 + rivals)]) if e]
        cn.check_converged([])
    finally:
        for channel in channels:
            channel.close()
        new.terminate()
        new.wait(timeout=20)
        cn.stop()
        node.kubelet.stop()
