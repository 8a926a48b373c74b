"""`cc-gpu pod-gate` as a process: releases a held pod, then stops on SIGTERM (exit 0) or Ctrl-C (exit 130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cc_gpu.dra.bindlabel import LABEL as BINDING_LABEL
from cc_gpu.dra.podgate import GATE, LABEL
from cc_gpu.kube.apiserver import ApiServerDouble

REPO = Path(__file__).resolve().parents[2]


def _held_pod(server: ApiServerDouble) -> None:
    server.create({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"namespace": "default", "name": "held", "labels": {LABEL: "pending"}},
                   "spec": {"schedulingGates": [{"name": GATE}],
                            "containers": [{"name": "main", "image": "registry.example/workload:1"}]}})


def _pod_gate(server: ApiServerDouble, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    return subprocess.Popen(
        [sys.executable, "-m", "cc_gpu", "pod-gate", "--kubeconfig", str(kubeconfig), *args],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_log(proc: subprocess.Popen[str], text: str) -> None:
    """Read the process's log until a line holds `text` (fails if it ends first)."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    while line and text not in line:
        line = proc.stderr.readline()
    assert text in line


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_pod_gate_runs_until_signalled(tmp_path: Path, signum: int, code: int) -> None:
    server = ApiServerDouble().start()
    try:
        _held_pod(server)
        proc = _pod_gate(server, tmp_path, "--interval", "0.1")
        _wait_for_log(proc, "released pod")  # running, its handlers installed, once it has released the held pod
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == code, err
        assert "Traceback" not in err
        released = server.store.get(server.store_type("pods"), "default", "held")
        assert not released["spec"].get("schedulingGates")
    finally:
        server.stop()


def test_pod_gate_labels_claims_with_their_binding_node(tmp_path: Path) -> None:
    """`--binding-labels DRIVER --no-pod-release`: the labeler alone labels a claim allocated to DRIVER's device with
    binding conditions with its node, leaves a held pod held, and stops on SIGTERM (exit 0)."""
    server = ApiServerDouble().start()
    try:
        _held_pod(server)
        claim = server.create({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                               "metadata": {"name": "c", "namespace": "default"},
                               "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                                   "deviceClassName": "vfio-gpu"}}]}}})
        claim["status"] = {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": "gpu.cc-gpu.io", "pool": "node-a", "device": "gpu-0",
             "bindingConditions": ["VfioReady"], "bindingFailureConditions": ["VfioFailed"]}]}}}
        kind = server.store_type("resourceclaims")
        server.store.replace(kind, "default", "c", claim, subresource="status")
        proc = _pod_gate(server, tmp_path, "--no-pod-release", "--binding-labels", "gpu.cc-gpu.io")
        _wait_for_log(proc, "claim labelled")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert server.store.get(kind, "default", "c")["metadata"]["labels"] == {BINDING_LABEL: "node-a"}
        assert server.store.get(server.store_type("pods"), "default", "held")["spec"]["schedulingGates"]
    finally:
        server.stop()
