"""The kernel's own view of the test devices, read straight from sysfs and /dev inside the guest.

The cases judge the binder by what the kernel says (driver links, driver_override, IOMMU groups, device nodes),
never by what the binder reports about itself, so this module reads sysfs directly and shares no code with it.
It can also put a device back by hand, used only to undo a failed case so the next one starts clean.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

SYS = "/sys"
DEV = "/dev"
PCI_DEVICES = f"{SYS}/bus/pci/devices"
PCI_DRIVERS = f"{SYS}/bus/pci/drivers"

EDU = "0x1234:0x11e8"
VIRTIO_RNG = "0x1af4:0x1005"
STD_VGA = "0x1234:0x1111"
ICH9_HDA = "0x8086:0x293e"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def ids(bdf: str) -> str:
    return f"{_read(f'{PCI_DEVICES}/{bdf}/vendor')}:{_read(f'{PCI_DEVICES}/{bdf}/device')}"


def driver(bdf: str) -> str | None:
    link = f"{PCI_DEVICES}/{bdf}/driver"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def driver_override(bdf: str) -> str | None:
    value = _read(f"{PCI_DEVICES}/{bdf}/driver_override")
    return None if value == "(null)" else value


def group_of(bdf: str) -> int:
    return int(os.path.basename(os.readlink(f"{PCI_DEVICES}/{bdf}/iommu_group")))


def members(group: int) -> list[str]:
    return sorted(os.listdir(f"{SYS}/kernel/iommu_groups/{group}/devices"))


def find(device_ids: str) -> list[str]:
    return sorted(b for b in os.listdir(PCI_DEVICES) if ids(b) == device_ids)


def is_bridge(bdf: str) -> bool:
    return _read(f"{PCI_DEVICES}/{bdf}/class").startswith("0x0604")


def vfio_cdev(bdf: str) -> str | None:
    path = f"{PCI_DEVICES}/{bdf}/vfio-dev"
    if not os.path.isdir(path):
        return None
    names = os.listdir(path)
    return names[0] if names else None


@dataclass(frozen=True)
class DeviceState:
    driver: str | None
    override: str | None


def snapshot(bdfs: list[str]) -> dict[str, DeviceState]:
    return {b: DeviceState(driver(b), driver_override(b)) for b in bdfs}


def describe(state: dict[str, DeviceState]) -> str:
    return ", ".join(f"{b}: driver={s.driver or '-'} override={s.override or '-'}" for b, s in sorted(state.items()))


@dataclass(frozen=True)
class Topology:
    """The groups the QEMU command line lays out, found by device IDs (group numbers are the kernel's business)."""

    solo_edu: str
    shared_edu: str
    foreign: str
    display: str
    audio: str

    @property
    def solo_group(self) -> int:
        return group_of(self.solo_edu)

    @property
    def shared_group(self) -> int:
        return group_of(self.shared_edu)

    @property
    def display_group(self) -> int:
        return group_of(self.display)

    def all_groups(self) -> list[int]:
        return [self.solo_group, self.shared_group, self.display_group]

    def all_members(self) -> list[str]:
        return sorted({m for g in self.all_groups() for m in members(g)})


def topology() -> Topology:
    edus = find(EDU)
    solo = [e for e in edus if len(members(group_of(e))) == 1]
    shared = [e for e in edus if len(members(group_of(e))) > 1]
    (foreign,) = find(VIRTIO_RNG)
    (display,) = find(STD_VGA)
    (audio,) = find(ICH9_HDA)
    if len(solo) != 1 or len(shared) != 1:
        raise RuntimeError(f"unexpected edu layout: {[(e, group_of(e)) for e in edus]}")
    if group_of(foreign) != group_of(shared[0]) or group_of(audio) != group_of(display):
        raise RuntimeError("the emulated devices are not grouped as the QEMU topology intends")
    return Topology(solo[0], shared[0], foreign, display, audio)


def _write(path: str, data: str) -> None:
    with open(path, "w") as f:
        f.write(data)


def wait_driver(bdf: str, expected: str | None, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver(bdf) == expected:
            return True
        time.sleep(0.02)
    return driver(bdf) == expected


def bind_by_hand(bdf: str, target: str = "vfio-pci") -> None:
    """The raw sysfs sequence, used to set up states the binder must detect (not to test the binder)."""
    current = driver(bdf)
    if current == target:
        return
    if current is not None:
        _write(f"{PCI_DRIVERS}/{current}/unbind", bdf)
    _write(f"{PCI_DEVICES}/{bdf}/driver_override", target)
    _write(f"{PCI_DRIVERS}/{target}/bind", bdf)
    if not wait_driver(bdf, target):
        raise RuntimeError(f"{bdf} did not reach {target}")


def put_back_by_hand(bdf: str, original: DeviceState) -> None:
    """Undo whatever a failed case left on `bdf`: unbind, reset driver_override, probe its original driver."""
    current = driver(bdf)
    if current is not None and current != original.driver:
        _write(f"{PCI_DRIVERS}/{current}/unbind", bdf)
    _write(f"{PCI_DEVICES}/{bdf}/driver_override", original.override or "\n")
    if original.driver is not None and driver(bdf) != original.driver:
        _write(f"{PCI_DRIVERS}/{original.driver}/bind", bdf)
        wait_driver(bdf, original.driver)


def dmesg_lines() -> list[str]:
    out = subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()


def hw_rngs() -> list[str]:
    try:
        return _read(f"{SYS}/class/misc/hw_random/rng_available").split()
    except FileNotFoundError:
        return []
