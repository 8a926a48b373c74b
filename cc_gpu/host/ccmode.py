"""The GPU's confidential-computing mode, read and published, never set.

From NVML when it manages the GPU; otherwise from BAR0 through a read-only mmap of `resource0`: register 0x1182cc on
Hopper, 0x590 on Blackwell, low two bits 0 off / 1 on / 3 devtools, bit 0x20 of the Hopper register for protected
PCIe. `unknown` whenever the answer is not certain: an unknown architecture, an all-ones read (a powered-down or
resetting device), a mapping refused by kernel lockdown, or any other failure. A device on a vfio driver is never
read: it may belong to a running VM, and touching its BAR from the host is exactly what a tenant must not see.
Setting a mode goes through the GPU firmware and a reset; that is left to NVIDIA's tools.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cc_gpu.host.fsio import HostIO
from cc_gpu.host.nvml import NvmlDeviceInfo
from cc_gpu.host.pci import device_dir
from cc_gpu.host.roots import HostRoots

log = logging.getLogger(__name__)

CC_MODES = ("on", "off", "devtools", "ppcie", "unknown")
HIDDEN_FROM_HOST = ("on", "ppcie")
"""Modes in which the GPU serves only the confidential VM: the host's driver no longer offers it to NVML (`nvidia-smi`
on the host lists nothing) and it answers attestation requests only to the guest's driver. `devtools` still serves
the host (a debug mode); `off` is an ordinary GPU."""


@dataclass(frozen=True)
class CcRegister:
    offset: int
    ppcie_bit: int | None


CC_REGISTERS: dict[str, CcRegister] = {
    "hopper": CcRegister(0x1182CC, 0x20),
    "blackwell": CcRegister(0x590, None),
}

_LOW_BITS = {0: "off", 1: "on", 3: "devtools"}


def decode_cc_register(architecture: str, value: int) -> str:
    """Pure decoding of the register value; `unknown` for all ones or values the table does not define."""
    reg = CC_REGISTERS.get(architecture)
    if reg is None or value == 0xFFFFFFFF:
        return "unknown"
    if reg.ppcie_bit is not None and value & reg.ppcie_bit:
        return "ppcie"
    return _LOW_BITS.get(value & 0x3, "unknown")


def is_vfio_driver(driver: str | None) -> bool:
    return driver is not None and "vfio" in driver


def read_cc_mode(
    io: HostIO, roots: HostRoots, bdf: str, *, architecture: str, driver: str | None, nvml: NvmlDeviceInfo | None
) -> str:
    """The CC mode of the GPU at `bdf`, one of `CC_MODES`."""
    if nvml is not None and nvml.cc_mode is not None:
        return nvml.cc_mode
    if is_vfio_driver(driver):
        return "unknown"  # never read BAR0 of a device that may belong to a VM
    reg = CC_REGISTERS.get(architecture)
    if reg is None:
        return "unknown"
    try:
        value = io.read_mmio32(device_dir(roots, bdf) / "resource0", reg.offset)
    except (OSError, ValueError) as e:  # EPERM under lockdown, ENOENT, a BAR smaller than expected
        log.info("CC mode of %s unreadable from BAR0 (%s)", bdf, e)
        return "unknown"
    return decode_cc_register(architecture, value)
