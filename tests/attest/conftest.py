"""Fixtures for the attestation tests: NVIDIA's published sample evidence, and a fresh simulated CA per run.

The real vectors come from NVIDIA's public `nv-local-gpu-verifier` wheels, downloaded with pip at test time into a
cache outside the repository (`$CC_GPU_CACHE`, else `~/.cache/cc-gpu`; see `tests/nvidia_vectors.py`) and reused
on later runs. Only the sample files and root certificates are extracted; NVIDIA's code is never imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cc_gpu.attest.sim import SimulatedCa
from tests.nvidia_vectors import nvidia_files

NVIDIA_VERSIONS = ("2.1.1", "2.7.3")
NONCE_211 = bytes.fromhex("4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e")
NONCE_273 = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
AT_2025 = datetime(2025, 1, 15, tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    report: bytes
    chain: bytes
    nonce: bytes
    dir: Path

    def rim(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()


@pytest.fixture(scope="session")
def nvidia_211() -> Sample:
    d = nvidia_files("2.1.1")
    return Sample(
        (d / "samples/attestationReport.txt").read_bytes(),
        (d / "samples/gpuAkCertChain.txt").read_bytes(),
        NONCE_211,
        d / "samples",
    )


@pytest.fixture(scope="session")
def nvidia_273() -> Sample:
    d = nvidia_files("2.7.3")
    return Sample(
        (d / "samples/hopperAttestationReport.txt").read_bytes(),
        (d / "samples/hopperCertChain.txt").read_bytes(),
        NONCE_273,
        d / "samples",
    )


@pytest.fixture(scope="session")
def nvidia_certs() -> Path:
    return nvidia_files("2.7.3") / "certs"


SIM_NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def sim_ca() -> SimulatedCa:
    """A test CA hierarchy with keys generated for this run only."""
    return SimulatedCa.create(SIM_NOW)
