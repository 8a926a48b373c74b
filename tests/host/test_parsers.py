"""Pure parsers: modules.alias matching and raw uevent datagrams."""

from __future__ import annotations

import pytest

from cc_gpu.host.modalias import choose_vfio_module, driver_name_for_module, parse_vfio_aliases
from cc_gpu.host.uevents import parse_uevent

ALIASES = parse_vfio_aliases(
    "alias pci:v000010DEd*sv*sd*bc03sc*i* nvidia\n"
    "alias vfio_pci:v000010DEd*sv*sd*bc03sc02i00* broad_vfio_pci\n"
    "alias vfio_pci:v000010DEd00002342sv*sd*bc03sc02i00* nvgrace_gpu_vfio_pci\n"
    "garbage line\n"
)
GH200 = "pci:v000010DEd00002342sv000010DEsd000016C1bc03sc02i00"
H100 = "pci:v000010DEd00002330sv000010DEsd000016C1bc03sc02i00"
AUDIO = "pci:v000010DEd000022E8sv000010DEsd000016C1bc04sc03i00"


@pytest.mark.parametrize(
    ("modalias", "module"),
    [
        pytest.param(GH200, "nvgrace_gpu_vfio_pci", id="fewest-wildcards-wins"),
        pytest.param(H100, "broad_vfio_pci", id="broad-match"),
        pytest.param(AUDIO, "vfio-pci", id="no-match-falls-back"),
        pytest.param("", "vfio-pci", id="no-modalias"),
    ],
)
def test_choose_vfio_module(modalias: str, module: str) -> None:
    assert choose_vfio_module(ALIASES, modalias) == module


def test_only_vfio_aliases_are_kept() -> None:
    assert [a.module for a in ALIASES] == ["broad_vfio_pci", "nvgrace_gpu_vfio_pci"]


@pytest.mark.parametrize(
    ("module", "driver"), [("vfio_pci", "vfio-pci"), ("nvgrace_gpu_vfio_pci", "nvgrace_gpu_vfio_pci")]
)
def test_driver_names(module: str, driver: str) -> None:
    assert driver_name_for_module(module) == driver


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            b"bind@/devices/pci0000:00/0000:00:01.0/0000:01:00.0\x00ACTION=bind\x00"
            b"DEVPATH=/devices/pci0000:00/0000:00:01.0/0000:01:00.0\x00SUBSYSTEM=pci\x00DRIVER=vfio-pci\x00SEQNUM=7",
            ("bind", "0000:01:00.0", "pci", "vfio-pci"),
            id="bind",
        ),
        pytest.param(b"remove@/x\x00ACTION=remove\x00DEVPATH=/x", ("remove", "x", "", ""), id="no-subsystem"),
        pytest.param(b"libudev\x00\xfe\xed\xca\xfe", None, id="udev-rebroadcast-ignored"),
        pytest.param(b"junk", None, id="not-a-uevent"),
    ],
)
def test_parse_uevent(data: bytes, expected: tuple[str, str, str, str] | None) -> None:
    ev = parse_uevent(data)
    if expected is None:
        assert ev is None
    else:
        assert ev is not None
        assert (ev.action, ev.name, ev.subsystem, ev.driver) == expected
