"""CDI specs in exactly the shape cc-gpu's plugin writes, for checking against the Go consumer.

The shape (README "CDI specs"): vendor `cc-gpu.io`, class `vfio`, cdiVersion 0.5.0, one transient file per claim
named `cc-gpu.io-vfio_<claimUID>.yaml` with devices `<claimUID>-<device>`, one per-pod file
`cc-gpu.io-vfio_pod-<admission uid>.yaml` with the single device `pod-<admission uid>` that holds the nodes of all
of that pod's claims; device nodes sit in device-level containerEdits with their host paths only, spec-level edits
stay empty; a device uses either the legacy group nodes or the iommufd nodes, never both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

KIND = "cc-gpu.io/vfio"
CDI_VERSION = "0.5.0"


def legacy_nodes(group: int) -> list[str]:
    return [f"/dev/vfio/{group}", "/dev/vfio/vfio"]


def iommufd_nodes(index: int) -> list[str]:
    return [f"/dev/vfio/devices/vfio{index}", "/dev/iommu"]


def _spec(devices: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return {
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": [
            {"name": name, "containerEdits": {"deviceNodes": [{"path": p} for p in nodes]}}
            for name, nodes in devices.items()
        ],
    }


def write_claim_spec(cdi_root: Path, claim_uid: str, devices: Mapping[str, Sequence[str]]) -> list[str]:
    """Writes a claim's spec (`devices`: device name -> host nodes); returns the qualified CDI ids."""
    named = {f"{claim_uid}-{device}": nodes for device, nodes in devices.items()}
    (cdi_root / f"cc-gpu.io-vfio_{claim_uid}.yaml").write_text(yaml.safe_dump(_spec(named)))
    return [f"{KIND}={name}" for name in named]


def write_pod_spec(cdi_root: Path, admission_uid: str, claims_nodes: Sequence[Sequence[str]]) -> str:
    """Writes the per-pod spec holding every node of the pod's claims once; returns the qualified CDI id."""
    nodes: list[str] = []
    for claim_nodes in claims_nodes:
        nodes += [n for n in claim_nodes if n not in nodes]
    name = f"pod-{admission_uid}"
    (cdi_root / f"cc-gpu.io-vfio_{name}.yaml").write_text(yaml.safe_dump(_spec({name: nodes})))
    return f"{KIND}={name}"
