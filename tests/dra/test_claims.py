"""Claim planning: which results are ours, request names as the kubelet wants them, and what makes a claim unusable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.dra.claims import parse_claim
from cc_gpu.dra.errors import ClaimError
from cc_gpu.dra.ports import GpuView

DRIVER = "gpu.cc-gpu.io"
REPO = Path(__file__).resolve().parents[2]
GPU = GpuView("gpu-a", "0000:18:00.0", ("0000:18:00.0",), ("0000:18:00.0",), 10, "0x10de", "0x2330", "H100",
              "hopper", 0, "pci0000:16", False, True, "on", "nvidia", None)


def claim(results: list[dict[str, Any]], uid: str = "u1", reserved: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "c", "namespace": "ns", "uid": uid},
        "status": {
            "allocation": {"devices": {"results": results}},
            "reservedFor": [{"resource": "pods", "name": f"p{i}", "uid": f"pu{i}"} for i in range(reserved)],
        },
    }


def result(device: str = "gpu-a", driver: str = DRIVER, request: str = "gpu", pool: str = "node") -> dict[str, Any]:
    return {"request": request, "driver": driver, "pool": pool, "device": device}


def test_other_drivers_results_are_skipped_and_subrequests_stripped() -> None:
    plan = parse_claim(
        claim([result(driver="gpu.nvidia.com", device="gpu-0"), result(request="gpu/h100")]), "u1", DRIVER, "node",
        {"gpu-a": GPU},
    )
    assert [(d.request, d.device.name) for d in plan.devices] == [("gpu", "gpu-a")]
    assert plan.pod["name"] == "p0"


@pytest.mark.parametrize(
    ("name", "obj", "uid", "message"),
    [
        ("replaced claim", claim([result()], uid="other"), "u1", "was replaced"),
        ("not allocated", {"metadata": {"uid": "u1"}, "status": {}}, "u1", "not allocated"),
        ("only other drivers", claim([result(driver="x.example.com")]), "u1", "no devices allocated by driver"),
        ("other pool", claim([result(pool="node-b")]), "u1", "from pool 'node-b'"),
        ("unknown device", claim([result(device="gpu-z")]), "u1", "gpu-z is not a device"),
        ("admin access", claim([{**result(), "adminAccess": True}]), "u1", "adminAccess"),
    ],
)
def test_unusable_claims(name: str, obj: dict[str, Any], uid: str, message: str) -> None:
    with pytest.raises(ClaimError) as exc:
        parse_claim(obj, uid, DRIVER, "node", {"gpu-a": GPU})
    assert message in str(exc.value), name


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("the prepare engine", "cc_gpu.dra.state"),
        ("the plugin assembly", "cc_gpu.dra.plugin"),
        ("the gRPC servers", "cc_gpu.dra.server"),
        ("the kubelet double", "cc_gpu.dra.kubelet"),
        ("the plugin command's flags", "cc_gpu.cli.plugin"),
    ],
)
def test_kubernetes_client_is_not_imported(name: str, module: str) -> None:
    code = f"import sys, {module}; print('kubernetes' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", name
