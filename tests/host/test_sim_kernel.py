"""The simulated kernel answers writes the way Linux does, so the binder is tested against faithful behaviour."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from cc_gpu.host.host import Host
from tests.host.conftest import SimFactory, drivers

GPU, AUDIO, BRIDGE = "0000:41:00.0", "0000:41:00.1", "0000:40:01.0"


def _w(host: Host, rel: str, data: str) -> None:
    host.io.write_text(host.roots.sysfs / rel, data)


def _vfio(host: Host) -> None:
    host.io.load_module("vfio_pci")


@pytest.mark.parametrize(
    ("name", "action", "code"),
    [
        ("bind-when-bound", lambda h: _w(h, "bus/pci/drivers/snd_hda_intel/bind", GPU), errno.EBUSY),
        ("bind-without-match", lambda h: (_w(h, "bus/pci/drivers/nvidia/unbind", GPU),
                                          _w(h, "bus/pci/drivers/mlx5_core/bind", GPU)), errno.ENODEV),
        ("bind-missing-device", lambda h: _w(h, "bus/pci/drivers/nvidia/bind", "0000:ee:00.0"), errno.ENODEV),
        ("unbind-other-driver", lambda h: _w(h, "bus/pci/drivers/nvidia/unbind", AUDIO), errno.ENODEV),
        ("vfio-refuses-bridges", lambda h: (_vfio(h), _w(h, "bus/pci/drivers/pcieport/unbind", BRIDGE),
                                            _w(h, f"bus/pci/devices/{BRIDGE}/driver_override", "vfio-pci"),
                                            _w(h, "bus/pci/drivers/vfio-pci/bind", BRIDGE)), errno.EINVAL),
        ("read-only-attribute", lambda h: _w(h, f"bus/pci/devices/{GPU}/vendor", "0x1234"), errno.EACCES),
        ("driver-not-loaded", lambda h: _w(h, "bus/pci/drivers/vfio-pci/bind", GPU), errno.ENOENT),
        ("sriov-unsupported", lambda h: _w(h, f"bus/pci/devices/{GPU}/sriov_numvfs", "1"), errno.ENOENT),
        ("reset-without-method", lambda h: (_w(h, f"bus/pci/devices/{BRIDGE}/reset", "1")), errno.ENOTTY),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_kernel_errnos(sim: SimFactory, name: str, action: Callable[[Host], object], code: int) -> None:
    host, _ = sim("h100-pcie-audio")
    with pytest.raises(OSError) as ei:
        action(host)
    assert ei.value.errno == code, name


def test_override_decides_the_match_and_clears_with_a_newline(sim: SimFactory) -> None:
    host, _ = sim("h100-pcie-audio")
    _vfio(host)
    _w(host, "bus/pci/drivers/nvidia/unbind", GPU)
    _w(host, f"bus/pci/devices/{GPU}/driver_override", "vfio-pci")
    with pytest.raises(OSError) as ei:
        _w(host, "bus/pci/drivers/nvidia/bind", GPU)
    assert ei.value.errno == errno.ENODEV
    _w(host, f"bus/pci/devices/{GPU}/driver_override", "\n")
    assert host.io.read_text(host.roots.pci_devices / GPU / "driver_override") == "(null)\n"
    _w(host, "bus/pci/drivers_probe", GPU)
    assert drivers(host, GPU) == ["nvidia"]


def test_group_node_appears_only_when_the_group_is_viable(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    _vfio(host)
    node = kernel.dev / "vfio" / "30"
    _w(host, "bus/pci/drivers/nvidia/unbind", GPU)
    _w(host, f"bus/pci/devices/{GPU}/driver_override", "vfio-pci")
    _w(host, "bus/pci/drivers/vfio-pci/bind", GPU)
    assert not node.exists()  # the audio function is still on snd_hda_intel
    _w(host, "bus/pci/drivers/snd_hda_intel/unbind", AUDIO)
    assert node.exists()  # unbound is fine
    _w(host, "bus/pci/drivers_probe", AUDIO)
    assert drivers(host, AUDIO) == ["snd_hda_intel"] and not node.exists()


def test_writes_emit_uevents(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    _w(host, "bus/pci/drivers/nvidia/unbind", GPU)
    _w(host, f"bus/pci/devices/{GPU}/uevent", "change")
    actions = [(e["ACTION"], e["DEVPATH"].rsplit("/", 1)[-1], e.get("DRIVER")) for e in kernel.events()]
    assert actions[-2:] == [("unbind", GPU, "nvidia"), ("change", GPU, None)]


def test_unknown_module_cannot_load(sim: SimFactory) -> None:
    host, _ = sim("dgx-h100")
    with pytest.raises(OSError, match="not found"):
        host.io.load_module("no_such_module")
