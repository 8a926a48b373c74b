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
        "is on vfio-pci",
        "refused: pod default/vm-2: RuntimeClass 'runc' has handler 'runc'",
        "Event on ResourceClaim default/gpu-2: Warning PrepareRefused",
        "wall time for both",
        "CDI specs left: none; unprepare errors: none",
    ):
        assert expected in out, expected
    assert out.count(": nvidia") >= 3
