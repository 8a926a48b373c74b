"""Product names and architectures from PCI IDs.

NVML cannot name a GPU on vfio-pci, and nodes rarely ship `pci.ids`; the GPUs this driver cares about (the ones with
confidential-computing support, Hopper and later) fit in a small table. The architecture decides where the CC-mode
register sits in BAR0, so an ID that is not in the table gets the architecture `unknown` (and CC mode `unknown`)
rather than a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

NVIDIA = 0x10DE


@dataclass(frozen=True)
class Product:
    name: str
    architecture: str  # "hopper" | "blackwell" | "unknown"


_NVIDIA_GPUS: dict[int, Product] = {
    # Hopper (GH100)
    0x2321: Product("H100 NVL", "hopper"),
    0x2322: Product("H800 PCIe", "hopper"),
    0x2324: Product("H800 SXM5", "hopper"),
    0x2329: Product("H20", "hopper"),
    0x2330: Product("H100 SXM5 80GB", "hopper"),
    0x2331: Product("H100 PCIe", "hopper"),
    0x2335: Product("H200 SXM 141GB", "hopper"),
    0x233B: Product("H200 NVL", "hopper"),
    0x2342: Product("GH200 480GB", "hopper"),
    0x2348: Product("GH200 144G HBM3e", "hopper"),
    # Blackwell (GB100 / GB202)
    0x2901: Product("B200", "blackwell"),
    0x2941: Product("GB200", "blackwell"),
    0x2BB1: Product("RTX PRO 6000 Blackwell Workstation Edition", "blackwell"),
    0x2BB4: Product("RTX PRO 6000 Blackwell Max-Q Workstation Edition", "blackwell"),
    0x2BB5: Product("RTX PRO 6000 Blackwell Server Edition", "blackwell"),
}

_NVIDIA_OTHER: dict[int, str] = {
    0x22A3: "H100 NVSwitch",
    0x22E8: "High Definition Audio Controller",
}


def lookup(vendor_id: int, device_id: int) -> Product:
    """The product for a PCI ID; unknown IDs get a descriptive name and architecture `unknown`."""
    if vendor_id == NVIDIA:
        if device_id in _NVIDIA_GPUS:
            return _NVIDIA_GPUS[device_id]
        if device_id in _NVIDIA_OTHER:
            return Product(_NVIDIA_OTHER[device_id], "unknown")
        return Product(f"NVIDIA device {device_id:04x}", "unknown")
    return Product(f"PCI device {vendor_id:04x}:{device_id:04x}", "unknown")


def known_gpu_ids() -> dict[int, Product]:
    """The table, for tests and docs."""
    return dict(_NVIDIA_GPUS)
