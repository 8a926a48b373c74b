"""CDI specs: the Kata rules (version, device-level nodes, no legacy/iommufd mix, names), atomic files, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cc_gpu.dra.cdi import (
    CdiDevice,
    CdiWriter,
    build_spec,
    pod_device_from_annotation,
    qualified,
)
from cc_gpu.dra.errors import CdiError
from tests.cdi.schema import validate_cdi

UID = "3f1c2a9e-6f0b-4b8e-9a55-0d7c1e2b4a10"


@pytest.mark.parametrize(
    ("name", "nodes"),
    [
        ("legacy group", ("/dev/vfio/14",)),
        ("legacy group plus container", ("/dev/vfio/vfio", "/dev/vfio/14")),
        ("iommufd", ("/dev/iommu", "/dev/vfio/devices/vfio0")),
        ("two legacy groups", ("/dev/vfio/14", "/dev/vfio/15")),
    ],
)
def test_valid_specs(name: str, nodes: tuple[str, ...]) -> None:
    spec = build_spec([CdiDevice(f"{UID}-gpu-0000-3b-00-0", nodes)])
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["kind"] == "cc-gpu.io/vfio"
    assert "containerEdits" not in spec, "spec-level edits must stay empty"
    dev_nodes = spec["devices"][0]["containerEdits"]["deviceNodes"]
    assert [n["path"] for n in dev_nodes] == list(nodes)
    assert all(n["hostPath"] == n["path"] for n in dev_nodes)
    validate_cdi(spec)


@pytest.mark.parametrize(
    ("name", "devices", "message"),
    [
        ("mixed legacy and iommufd", [CdiDevice("d", ("/dev/vfio/14", "/dev/vfio/devices/vfio0"))], "mixed"),
        ("not a vfio node", [CdiDevice("d", ("/dev/nvidia0",))], "not a VFIO device node"),
        ("no nodes", [CdiDevice("d", ())], "no device nodes"),
        ("bad name", [CdiDevice("-d", ("/dev/vfio/1",))], "not valid"),
        ("duplicate name", [CdiDevice("d", ("/dev/vfio/1",)), CdiDevice("d", ("/dev/vfio/2",))], "twice"),
        ("no devices", [], "at least one"),
    ],
)
def test_invalid_specs(name: str, devices: list[CdiDevice], message: str) -> None:
    with pytest.raises(CdiError) as exc:
        build_spec(devices)
    assert message in str(exc.value), name


def test_writer_files(tmp_path: Path) -> None:
    w = CdiWriter(tmp_path / "cdi")
    path = w.write_claim(UID, [CdiDevice(f"{UID}-gpu-a", ("/dev/vfio/14",))])
    assert path.name == f"cc-gpu.io-vfio_{UID}.json"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    validate_cdi(json.loads(path.read_text()))
    pod = w.write_pod("pod-abc", ["/dev/vfio/14", "/dev/vfio/15"])
    assert [CdiWriter.id_of(p) for p in w.owned_files()] == [UID, "pod-abc"]
    assert not [p for p in (tmp_path / "cdi").iterdir() if p.name.startswith(".")]
    w.remove_claim(UID)
    w.remove_claim(UID)
    pod.unlink()
    assert w.owned_files() == []


@pytest.mark.parametrize(
    ("name", "value", "want"),
    [
        ("ours", "cc-gpu.io/vfio=pod-1234", "pod-1234"),
        ("ours among others", "nvidia.com/gpu=0, cc-gpu.io/vfio=pod-9", "pod-9"),
        ("other kind", "nvidia.com/pgpu=pod-1", None),
        ("our kind, wrong prefix", "cc-gpu.io/vfio=claim-1", None),
        ("absent", None, None),
    ],
)
def test_pod_annotation(name: str, value: str | None, want: str | None) -> None:
    assert pod_device_from_annotation(value) == want, name


def test_qualified() -> None:
    assert qualified("x-y") == "cc-gpu.io/vfio=x-y"
