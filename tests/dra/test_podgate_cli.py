"""`cc-gpu pod-gate` as a process: releases a held pod, then stops on SIGTERM (exit 0) or Ctrl-C (exit 130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
