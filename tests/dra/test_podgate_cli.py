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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_pod_gate_runs_until_signalled(tmp_path: Path, signum: int, code: int) -> None:
    server = ApiServerDouble().start()
    try:
        server.create({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"namespace": "default", "name": "held", "labels": {LABEL: "pending"}},
                       "spec": {"schedulingGates": [{"name": GATE}],
                                "containers": [{"name": "main", "image": "registry.example/workload:1"}]}})
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cc_gpu", "pod-gate", "--kubeconfig", str(kubeconfig), "--interval", "0.1"],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stderr is not None
        # Running, its handlers installed, once it has released the held pod (its log line says so).
        line = proc.stderr.readline()
        while line and "released pod" not in line:
            line = proc.stderr.readline()
        assert "released pod" in line
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
        server.create({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"namespace": "default", "name": "held", "labels": {LABEL: "pending"}},
                       "spec": {"schedulingGates": [{"name": GATE}],
                                "containers": [{"name": "main", "image": "registry.example/workload:1"}]}})
        claim = server.create({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                               "metadata": {"name": "c", "namespace": "default"},
                               "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                                   "deviceClassName": "vfio-gpu"}}]}}})
        claim["status"] = {"allocation": {"devices": {"results": [
            {"request": "gpu", "driver": "gpu.cc-gpu.io", "pool": "node-a", "device": "gpu-0",
             "bindingConditions": ["VfioReady"], "bindingFailureConditions": ["VfioFailed"]}]}}}
        kind = server.store_type("resourceclaims")
        server.store.replace(kind, "default", "c", claim, subresource="status")
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cc_gpu", "pod-gate", "--kubeconfig", str(kubeconfig), "--no-pod-release",
             "--binding-labels", "gpu.cc-gpu.io"],
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "claim labelled" not in line:
            line = proc.stderr.readline()
        assert "claim labelled" in line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert server.store.get(kind, "default", "c")["metadata"]["labels"] == {BINDING_LABEL: "node-a"}
        assert server.store.get(server.store_type("pods"), "default", "held")["spec"]["schedulingGates"]
    finally:
        server.stop()
