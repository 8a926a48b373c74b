"""`cc-gpu demo` runs end to end on the embedded default and tells the story the README promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_and_narrates() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cc_gpu", "demo"], env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for expected in (
        "versions ['v1.DRAPlugin', 'v1beta1.DRAPlugin', 'v1alpha1.DRAResourceHealth']",
        "8 devices",
        '"cdiVersion": "0.5.0"',
        '"path": "/dev/vfio/devices/vfio',  # the SNP pod's GPU as an iommufd cdev (Kata >= 3.26)
        "is on vfio-pci",
        "refused: pod default/vm-2: RuntimeClass 'runc' has handler 'runc'",
        "Event on ResourceClaim default/gpu-2: Warning PrepareRefused",
        "wall time for both",
        "CDI specs left: none; unprepare errors: none",
        "discovery: gpu-0000-ab-00-0 attested=False",
        "claim condition Attested=True (EvidenceVerified)",
        "token verified against ConfigMap cc-gpu-token-keys/cc-gpu-token-keys-demo-node",
        "rejected: GPU attestation rejected: gpu-0000-ab-00-0 (0000:ab:00.0): measres (mismatching indexes: [9])",
        "nothing bound: 0000:ab:00.0 is still on nvidia",
        "Warning GpuAttestationRejected",
        "claim condition Attested=Unknown (AwaitingGuestEvidence)",
        "in the VM: cc-gpu attest collect -> exit 0, accepted=True",
        "claim condition Attested=True (GuestEvidenceVerified), evidence: guest, challenge consumed",
        "other conditions kept: ['Ready']",
        "token verified: evidence guest",
        "replay of the same challenge: exit 1, refused: ['x-cc-gpu-challenge-reused']",
    ):
        assert expected in out, expected
    assert out.count(": nvidia") >= 3


def test_demo_on_a_legacy_only_node_shows_the_refusal() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cc_gpu", "demo", "--topology", "dgx-h100-legacy"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "refused: device gpu-0000-18-00-0: a confidential pod's GPU must be passed as an iommufd cdev" in proc.stdout
    assert "nothing bound: 0000:18:00.0 is still on nvidia" in proc.stdout
