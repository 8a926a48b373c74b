"""`cc-gpu discover` and `cc-gpu vfio` as a user runs them: real processes, exit codes, the JSON document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cc_gpu(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cc_gpu", *args], capture_output=True, text=True, env=env,
                          check=False, timeout=60)


def test_discover_dgx_h100_json_lists_eight_gpus_with_groups() -> None:
    out = cc_gpu("discover", "--sim", "dgx-h100", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["version"] == 1
    assert len(doc["gpus"]) == 8
    assert [g["iommu_group"] for g in doc["gpus"]] == list(range(10, 18))
    assert {g["product_name"] for g in doc["gpus"]} == {"H100 SXM5 80GB"}
    assert {g["vendor_id"] for g in doc["gpus"]} == {"10de"}
    assert len(doc["units"]) == 8
    assert doc["node"] == {"iommu": True, "iommufd": True, "tee": {"sev_snp": True, "tdx": False}}
    assert set(doc["gpus"][0]) >= {"bdf", "device_id", "subsystem_device_id", "architecture", "numa_node",
                                   "pcie_root", "driver", "iommufd_cdev", "sriov", "display", "cc_mode", "nvml"}


def test_discover_json_is_stable() -> None:
    first = cc_gpu("discover", "--sim", "two-gpus-one-group", "--json").stdout
    assert first == cc_gpu("discover", "--sim", "two-gpus-one-group", "--json").stdout


def test_discover_table_is_readable() -> None:
    out = cc_gpu("discover", "--sim", "dgx-h100")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["BDF", "PRODUCT", "ARCH"]
    assert sum("H100 SXM5 80GB" in line for line in lines) == 8
    assert "8 GPU(s) in 8 passthrough unit(s); host TEE: sev-snp" in out.stdout


def test_discover_table_names_shared_groups() -> None:
    out = cc_gpu("discover", "--sim", "two-gpus-one-group")
    assert "IOMMU group 32 holds 2 GPUs" in out.stdout


def test_discover_no_iommu_fails_clearly() -> None:
    out = cc_gpu("discover", "--sim", "no-iommu")
    assert out.returncode == 1
    assert "the IOMMU is off" in out.stderr and "intel_iommu=on" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--sim", "nonesuch"], "unknown simulated topology 'nonesuch'", id="unknown-topology"),
        pytest.param(["--sim", "dgx-h100", "--vendor", "xyz"], "argument --vendor: expected a 16-bit PCI id",
                     id="bad-filter"),
    ],
)
def test_discover_usage_errors(args: list[str], message: str) -> None:
    out = cc_gpu("discover", *args)
    assert out.returncode == 2
    assert message in out.stderr


def test_discover_lists_topologies() -> None:
    out = cc_gpu("discover", "--sim", "list")
    assert out.returncode == 0
    assert {line.split()[0] for line in out.stdout.splitlines()} >= {"dgx-h100", "no-iommu", "blackwell-iommufd"}


def test_discover_against_a_tree_by_sysfs_root(tmp_path: Path) -> None:
    node = tmp_path / "node"
    assert cc_gpu("discover", "--sim", "h100-pcie-audio", "--sim-root", str(node)).returncode == 0
    out = cc_gpu("discover", "--root", str(node), "--no-nvml", "--json")
    assert out.returncode == 0, out.stderr
    assert [g["bdf"] for g in json.loads(out.stdout)["gpus"]] == ["0000:41:00.0"]


def test_vfio_bind_status_restore_cycle(tmp_path: Path) -> None:
    sim = ["--sim", "h100-pcie-audio", "--sim-root", str(tmp_path / "node")]
    out = cc_gpu("vfio", "bind", "41:00.0", *sim, "--json")
    assert out.returncode == 0, out.stderr
    (bound,) = json.loads(out.stdout)
    assert (bound["group"], bound["owner"], bound["device_nodes"]) == (30, "admin", ["/dev/vfio/30"])
    status = json.loads(cc_gpu("vfio", "status", "30", *sim, "--json").stdout)
    assert status[0]["owner"] == "admin" and status[0]["viable"] and status[0]["vfio_node"]
    assert [m["driver"] for m in status[0]["members"]] == ["vfio-pci", "vfio-pci"]
    assert cc_gpu("vfio", "restore", "30", *sim).returncode == 0
    status = json.loads(cc_gpu("vfio", "status", *sim, "--json").stdout)
    assert [m["driver"] for m in status[0]["members"]] == ["nvidia", "snd_hda_intel"]


def test_vfio_refuses_a_group_held_by_another_owner_unless_forced(tmp_path: Path) -> None:
    sim = ["--sim", "h100-pcie-audio", "--sim-root", str(tmp_path / "node")]
    assert cc_gpu("vfio", "bind", "30", "--owner", "plugin", *sim).returncode == 0
    out = cc_gpu("vfio", "restore", "30", *sim)
    assert out.returncode == 1
    assert "GroupOwnedError" in out.stderr and "held by 'plugin'" in out.stderr
    assert cc_gpu("vfio", "restore", "30", "--force", *sim).returncode == 0


def test_vfio_foreign_device_needs_allow(tmp_path: Path) -> None:
    sim = ["--sim", "shared-group-nic", "--sim-root", str(tmp_path / "node")]
    out = cc_gpu("vfio", "bind", "31", *sim)
    assert out.returncode == 1 and "ForeignDeviceError" in out.stderr and "0000:83:00.0" in out.stderr
    out = cc_gpu("vfio", "bind", "31", "--allow", "83:00.0", *sim)
    assert out.returncode == 0, out.stderr
    assert "0000:83:00.0 mlx5_core -> vfio-pci" in out.stdout


def test_vfio_usage_errors(tmp_path: Path) -> None:
    sim = ["--sim", "dgx-h100", "--sim-root", str(tmp_path / "node")]
    out = cc_gpu("vfio", "bind", "not-a-target", *sim)
    assert out.returncode == 2 and "expected an IOMMU group number or a PCI address" in out.stderr
    assert cc_gpu("vfio").returncode == 2
    assert cc_gpu("vfio", "bind", "999", *sim).returncode == 1


def test_vfio_reset_and_recover(tmp_path: Path) -> None:
    sim = ["--sim", "dgx-h100", "--sim-root", str(tmp_path / "node")]
    out = cc_gpu("vfio", "reset", "18:00.0", *sim)
    assert out.returncode == 0 and "0000:18:00.0" in out.stdout
    out = cc_gpu("vfio", "recover", *sim)
    assert out.returncode == 0 and "recovered: (nothing)" in out.stdout
