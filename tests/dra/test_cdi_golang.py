"""The emitted CDI specs load in the Go CDI library (Debian's build of the loader container runtimes use).

The checker is built from `golang/cdicheck.go` against the Debian package's sources (the test setup installs
`golang-go` and the library). A spec it refuses would make the runtime's "CDI registry refresh" fail for every pod
on the node, so the test also proves the checker catches that: a `cdiVersion` above what the library accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cc_gpu.dra.cdi import CdiDevice, CdiWriter, qualified

HERE = Path(__file__).resolve().parent
GOPATH = "/usr/share/gocode"
UID = "3f1c2a9e-6f0b-4b8e-9a55-0d7c1e2b4a10"

pytestmark = pytest.mark.slow  # builds a Go program (about 10 s on a cold cache)


@pytest.fixture(scope="module")
def cdicheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cdicheck")
    env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off", "GOCACHE": str(out / "cache"), "GOFLAGS": ""}
    subprocess.run(["go", "build", "-o", str(out / "cdicheck"), str(HERE / "golang" / "cdicheck.go")],
                   env=env, check=True, capture_output=True, timeout=300)
    return out / "cdicheck"


def _check(binary: Path, spec_dir: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), str(spec_dir), *names], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("name", "devices"),
    [
        ("legacy group", [CdiDevice(f"{UID}-gpu-0000-18-00-0", ("/dev/vfio/10",))]),
        ("iommufd", [CdiDevice(f"{UID}-gpu-0000-18-00-0", ("/dev/iommu", "/dev/vfio/devices/vfio0"))]),
        ("two GPUs in one claim", [CdiDevice(f"{UID}-gpu-0000-18-00-0", ("/dev/vfio/10",)),
                                   CdiDevice(f"{UID}-gpu-0000-2a-00-0", ("/dev/vfio/11",))]),
    ],
)
def test_go_cdi_library_loads_our_specs(cdicheck: Path, tmp_path: Path, name: str, devices: list[CdiDevice]) -> None:
    writer = CdiWriter(tmp_path)
    writer.write_claim(UID, devices)
    writer.write_pod("pod-4a7e", [n for d in devices for n in d.nodes])
    ids = [qualified(d.name) for d in devices] + [qualified("pod-4a7e")]
    result = _check(cdicheck, tmp_path, *ids)
    assert result.returncode == 0, (name, result.stdout)


def test_checker_catches_a_spec_the_loader_refuses(cdicheck: Path, tmp_path: Path) -> None:
    CdiWriter(tmp_path).write_claim(UID, [CdiDevice(f"{UID}-gpu-a", ("/dev/vfio/10",))])
    bad = json.loads((tmp_path / f"cc-gpu.io-vfio_{UID}.json").read_text())
    bad["cdiVersion"] = "0.6.0"
    (tmp_path / "other.json").write_text(json.dumps({**bad, "kind": "example.com/other"}))
    result = _check(cdicheck, tmp_path, qualified(f"{UID}-gpu-a"))
    assert result.returncode != 0
    assert "invalid" in result.stdout.lower() or "version" in result.stdout.lower()
