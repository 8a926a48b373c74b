"""Writes CDI specs with the plugin's own writer (`cc_gpu.dra.cdi`), for checking against the Go consumer.

Small wrappers so a test can name devices and nodes directly: the spec shape, file names and validation are the
plugin's, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cc_gpu.dra.cdi import POD_DEVICE_PREFIX, CdiDevice, CdiWriter, device_name, qualified


def legacy_nodes(group: int) -> list[str]:
    return [f"/dev/vfio/{group}", "/dev/vfio/vfio"]


def iommufd_nodes(index: int) -> list[str]:
    return [f"/dev/vfio/devices/vfio{index}", "/dev/iommu"]


def write_claim_spec(cdi_root: Path, claim_uid: str, devices: Mapping[str, Sequence[str]]) -> list[str]:
    """Writes a claim's spec (`devices`: device name -> host nodes); returns the qualified CDI ids."""
    named = [CdiDevice(device_name(claim_uid, device), tuple(nodes)) for device, nodes in devices.items()]
    CdiWriter(cdi_root).write_claim(claim_uid, named)
    return [qualified(d.name) for d in named]


def write_pod_spec(cdi_root: Path, admission_uid: str, claims_nodes: Sequence[Sequence[str]]) -> str:
    """Writes the per-pod spec holding every node of the pod's claims; returns the qualified CDI id."""
    nodes: list[str] = []
    for claim_nodes in claims_nodes:
        nodes += [n for n in claim_nodes if n not in nodes]
    name = f"{POD_DEVICE_PREFIX}{admission_uid}"
    CdiWriter(cdi_root).write_pod(name, nodes)
    return qualified(name)
