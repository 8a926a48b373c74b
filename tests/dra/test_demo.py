"""`cc-gpu demo` runs end to end on every simulated topology and tells the story each one can show."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cc_gpu.host.sim import TOPOLOGIES

REPO = Path(__file__).resolve().parents[2]

COMMON = (
    "Simulated: the node's kernel",
    "signed by a test CA the plugin makes for this run "
    "(roots 'SIM Device Identity CA' and 'SIM CoRIM signing Root CA')",
)
# Every node with a GPU ends with a GPU in CC mode on attested from inside its (simulated) VM.
GUEST = (
    "claim condition Attested=Unknown (AwaitingGuestEvidence)",
    "in the VM: cc-gpu attest collect -> exit 0, accepted=True",
    "claim condition Attested=True (GuestEvidenceVerified), evidence: guest, challenge consumed",
    "other conditions kept: ['Ready']",
    "token verified: evidence guest",
    "replay of the same challenge: exit 1, refused: ['x-cc-gpu-challenge-reused']",
)
GUEST_SHOWN = ("dgx-h100", "h100-pcie-audio", "two-gpus-one-group", "blackwell-iommufd", "gh200")
CC_ON_REFUSAL = "GPU is in CC mode 'on': it answers attestation requests only to the driver inside the confidential VM"
# What each topology must show; every line about a claim names it `claim default/claim-N`.
SHOWN: dict[str, tuple[str, ...]] = {
    "dgx-h100": (
        "versions ['v1.DRAPlugin', 'v1beta1.DRAPlugin', 'v1alpha1.DRAResourceHealth']",
        "8 devices",
        '"cdiVersion": "0.5.0"',
        '"path": "/dev/vfio/devices/vfio',  # the SNP pod's GPU as an iommufd cdev (Kata >= 3.26)
        "prepared claim default/claim-1: device gpu-0000-18-00-0",
        "bound: 0000:18:00.0 GPU was on nvidia, is on vfio-pci",
        "refused: claim default/claim-2: pod default/pod-2: RuntimeClass 'runc' has handler 'runc'",
        "Event on claim default/claim-2: Warning PrepareRefused",
        "wall time for both",
        "GPUs 0000:ba:00.0, 0000:db:00.0 were switched to CC mode off for this step",
        "discovery: gpu-0000-ba-00-0 attested=True",
        "claim default/claim-5 condition Attested=True (EvidenceVerified): GPU evidence (evidence: host, pre-flight)",
        "token verified against ConfigMap cc-gpu-token-keys/cc-gpu-token-keys-demo-node",
        "measurement 9 of gpu-0000-db-00-0's simulated evidence tampered to show a rejection",
        "rejected: claim default/claim-6: GPU attestation rejected: gpu-0000-db-00-0 (0000:db:00.0): measres "
        "(mismatching indexes: [9])",
        "nothing bound: 0000:db:00.0 is still on nvidia",
        "Event on claim default/claim-6: Warning GpuAttestationRejected",
        "prepared claim default/claim-7 on gpu-0000-5d-00-0",
        "CDI specs left: none; unprepare errors: none",
    ),
    "dgx-h100-legacy": (
        "refused: claim default/claim-1: device gpu-0000-18-00-0: a confidential pod's GPU must be passed as an "
        "iommufd cdev",
        "nothing bound: 0000:18:00.0 is still on nvidia",
        "expected: this node publishes iommuFD=false",
    ),
    "h100-pcie-audio": (
        "/dev/vfio/devices/vfio0, /dev/vfio/devices/vfio1",
        "bound: 0000:41:00.1 function was on snd_hda_intel, is on vfio-pci (same IOMMU group: it moves with the GPU)",
        "skipped: this node publishes 1 GPU device, the step needs two",
        "refused: claim default/claim-3: GPU attestation rejected: gpu-0000-41-00-0 (0000:41:00.0): "
        + CC_ON_REFUSAL,
        "0000:41:00.1: snd_hda_intel",
        "CDI specs left: none; unprepare errors: none",
    ),
    "shared-group-nic": (
        "refused: claim default/claim-1: 0000:83:00.0 [15b3:1021] in IOMMU group 31 (driver mlx5_core) is not allowed "
        "to leave the host",
        "nothing bound: 0000:82:00.0 is still on nvidia",
        "expected: the GPU's IOMMU group also holds 0000:83:00.0 (mlx5_core)",
    ),
    "two-gpus-one-group": (
        "1 devices",
        "gpu-0000-c2-00-0 stands for its whole IOMMU group: 0000:c2:00.0 and 0000:c3:00.0 share it",
        "bound: 0000:c3:00.0 GPU was on nvidia, is on vfio-pci (same IOMMU group: it moves with the GPU)",
        "refused: claim default/claim-3: GPU attestation rejected: gpu-0000-c2-00-0 (0000:c2:00.0): " + CC_ON_REFUSAL,
        "identity: trust on first use, unassigned (2 GPUs of this claim had no recorded identity",
        "0000:c3:00.0: nvidia",
        "CDI specs left: none; unprepare errors: none",
    ),
    "blackwell-iommufd": (
        "Prepare a claim for a pod with runtimeClassName kata-qemu-nvidia-gpu-tdx",
        "bound: 0000:1b:00.0 GPU was on nvidia, is on vfio-pci",
        "wall time for both",
        "Attested=True (EvidenceVerified)",
        "Warning GpuAttestationRejected",
        "CDI specs left: none; unprepare errors: none",
    ),
    "gh200": (
        "is on nvgrace_gpu_vfio_pci (the variant vfio driver modules.alias names for this GPU, not plain vfio-pci)",
        "refused: claim default/claim-3: GPU attestation rejected: gpu-0009-01-00-0 (0009:01:00.0): " + CC_ON_REFUSAL,
        "0009:01:00.0: nvidia",
        "CDI specs left: none; unprepare errors: none",
    ),
    "no-iommu": (
        "the plugin refused to start: cc-gpu plugin: no IOMMU groups under",
        "expected: this node was booted without an IOMMU",
    ),
    "emulated-edu": (
        "0 devices",
        "no NVIDIA GPU on this node, so nothing is published and there is nothing to claim",
    ),
}


def test_every_topology_has_a_story() -> None:
    assert set(SHOWN) == set(TOPOLOGIES)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_demo_runs_and_narrates(topology: str) -> None:
    args = ["--topology", topology] + ([] if topology == "dgx-h100" else ["--bind-delay", "0"])
    proc = subprocess.run(
        [sys.executable, "-m", "cc_gpu", "demo", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "unexpected" not in proc.stdout
    assert "Traceback" not in proc.stderr
    for expected in (*COMMON, *SHOWN[topology], *(GUEST if topology in GUEST_SHOWN else ())):
        assert expected in proc.stdout, expected
