"""Adapts the host layer (`cc_gpu.host`) to the plugin's `HostPort`: discovery into advertised devices, the binder.

Device names are derived from the PCI address (`gpu-0000-3b-00-0`), which is stable across reboots and driver
changes; when several GPUs share one IOMMU group they are one device, named after the first of them, because VFIO can
only hand the group out as a whole.
"""

from __future__ import annotations


def device_name_for(bdf: str) -> str:
    """The DNS-label device name for a PCI address: `0000:3b:00.0` -> `gpu-0000-3b-00-0`."""
    return "gpu-" + bdf.lower().replace(":", "-").replace(".", "-")
