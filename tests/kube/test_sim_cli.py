"""`cc-gpu sim apiserver` as a process: serves, writes a kubeconfig, stops cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cc_gpu.kube.client import KubernetesApi

REPO = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    kubeconfig = tmp_path / "out" / "kubeconfig"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cc_gpu",
            "sim",
            "apiserver",
            "--port",
            "0",
            "--kubeconfig-out",
            str(kubeconfig),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return process, kubeconfig


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_until_signalled(tmp_path: Path, signum: int) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "kind": "List",
                "items": [
                    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}},
                    {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "k"}, "handler": "h"},
                ],
            }
        )
    )
    process, kubeconfig = _start(tmp_path, "--seed", str(seed))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("API-server double serving at http://127.0.0.1:")
        assert process.stdout.readline().startswith("kubeconfig written to")
        api = KubernetesApi(kubeconfig)
        assert api.get_node("node-a")["metadata"]["name"] == "node-a"
        assert api.get_runtime_class("k")["handler"] == "h"
        assert api.host == line.split(" at ")[1].strip()
        api.close()
    finally:
        process.send_signal(signum)
        _, err = process.communicate(timeout=10)
    assert process.returncode == (130 if signum == signal.SIGINT else 0), err  # Ctrl-C: 130, as every command
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        pytest.param("[1]", "cannot read seed objects", id="not-objects"),
        pytest.param('{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "Bad_Name"}}', "was refused", id="bad"),
        pytest.param("{", "cannot read seed objects", id="not-json"),
    ],
)
def test_bad_seed_is_a_usage_error(tmp_path: Path, seed: str, message: str) -> None:
    path = tmp_path / "seed.json"
    path.write_text(seed)
    process, _ = _start(tmp_path, "--seed", str(path))
    _, err = process.communicate(timeout=20)
    assert process.returncode == 2
    assert message in err


def test_port_in_use_is_reported(tmp_path: Path) -> None:
    first, _ = _start(tmp_path)
    try:
        assert first.stdout is not None
        port = first.stdout.readline().rsplit(":", 1)[1].strip()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "cc_gpu", "sim", "apiserver", "--port", port],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
        )
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert time.monotonic() - started < 20
    finally:
        first.terminate()
        first.communicate(timeout=10)
