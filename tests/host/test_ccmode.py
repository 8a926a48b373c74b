"""CC mode readout: NVML first, then the BAR0 register through a read-only mmap, `unknown` whenever uncertain."""

from __future__ import annotations

from pathlib import Path

import pytest

from cc_gpu.host.ccmode import decode_cc_register, read_cc_mode
from cc_gpu.host.discovery import discover
from cc_gpu.host.fsio import RealHostIO
from cc_gpu.host.host import Host
from cc_gpu.host.nvml import NvmlDeviceInfo
from tests.host.conftest import SimFactory, binder


@pytest.mark.parametrize(
    ("arch", "value", "mode"),
    [
        pytest.param("hopper", 0x0, "off", id="hopper-off"),
        pytest.param("hopper", 0x1, "on", id="hopper-on"),
        pytest.param("hopper", 0x3, "devtools", id="hopper-devtools"),
        pytest.param("hopper", 0x21, "ppcie", id="hopper-ppcie-bit"),
        pytest.param("hopper", 0x2, "unknown", id="hopper-undefined-value"),
        pytest.param("hopper", 0xFFFFFFFF, "unknown", id="all-ones"),
        pytest.param("blackwell", 0x1, "on", id="blackwell-on"),
        pytest.param("blackwell", 0x20, "off", id="blackwell-has-no-ppcie-bit"),
        pytest.param("unknown", 0x1, "unknown", id="unknown-architecture"),
    ],
)
def test_decode(arch: str, value: int, mode: str) -> None:
    assert decode_cc_register(arch, value) == mode


@pytest.mark.parametrize("mode", ["on", "off", "devtools", "ppcie"])
@pytest.mark.parametrize("topology", ["dgx-h100", "blackwell-iommufd"])
def test_bar0_readout_per_gpu(sim: SimFactory, topology: str, mode: str) -> None:
    host, kernel = sim(topology)
    kernel.set_nvml(False)
    first = discover(host).gpus[0].bdf
    kernel.set_cc_mode(first, mode)
    gpus = discover(host).gpus
    expected = "on" if (topology == "blackwell-iommufd" and mode == "ppcie") else mode
    assert gpus[0].cc_mode == expected
    assert gpus[1].cc_mode == "on"


def test_all_ones_reads_unknown(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    kernel.set_nvml(False)
    kernel.set_cc_mode("0000:18:00.0", "all-ones")
    assert discover(host).gpus[0].cc_mode == "unknown"


def test_nvml_answer_wins_over_bar0(sim: SimFactory) -> None:
    host, _ = sim("dgx-h100")
    nv = NvmlDeviceInfo("GPU-x", 1, "v", "d", "devtools")
    mode = read_cc_mode(host.io, host.roots, "0000:18:00.0", architecture="hopper", driver="nvidia", nvml=nv)
    assert mode == "devtools"


def test_vfio_bound_gpu_is_never_read(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    kernel.set_nvml(False)
    reads: list[Path] = []

    class Spy(RealHostIO):
        def read_mmio32(self, path: Path, offset: int) -> int:
            reads.append(path)
            return super().read_mmio32(path, offset)

    binder(host).bind(10, "t")
    spy_host = Host(host.roots, Spy(), host.uevents, host.nvml, host.clock)
    gpus = {g.bdf: g for g in discover(spy_host).gpus}
    assert gpus["0000:18:00.0"].cc_mode == "unknown"
    assert gpus["0000:18:00.0"].driver == "vfio-pci"
    assert all("0000:18:00.0" not in str(p) for p in reads)
    assert len(reads) == 7


def test_lockdown_refusing_the_mapping_reads_unknown(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    kernel.set_nvml(False)

    class Lockdown(RealHostIO):
        def read_mmio32(self, path: Path, offset: int) -> int:
            raise PermissionError(1, "Operation not permitted")

    locked = Host(host.roots, Lockdown(), host.uevents, host.nvml, host.clock)
    assert {g.cc_mode for g in discover(locked).gpus} == {"unknown"}


def test_mapping_is_read_only(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    bar = kernel.device_dir("0000:18:00.0") / "resource0"
    bar.chmod(0o444)  # a read-only file still maps: the adapter never asks for write access
    assert host.io.read_mmio32(bar, 0x1182CC) == 0x1
