"""A simulated guest NVML: what the driver inside a confidential VM answers for the GPUs passed through to it.

Used by `cc-gpu attest collect --simulated-node DIR` and the tests: a stand-in for the `pynvml` module, answering
the calls `host/guestnvml.py` makes, with evidence of the simulated node's GPUs (their keys derived from the node's
shared test CA, `evidence.shared_simulated_ca`, so the verification service of the same simulated node trusts them).
Inside the VM the GPU is in CC mode and serves its guest: here NVML works whatever the host sees. Faults come from
the node's fault file, as for the host-side simulated provider, plus `wrong_gpu` (the VM reports another GPU's
evidence) for the identity checks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509

from cc_gpu.attest.guest import GuestEvidence
from cc_gpu.attest.sim import Faults, SimulatedCa, SimulatedGpu
from cc_gpu.dra.evidence import SIM_CA_FILE, SIM_FAULTS_FILE, shared_simulated_ca

HOPPER = 9
_FAULTS = {f.name for f in fields(Faults)}


class SimulatedGuestNvml:
    """The `pynvml` calls of the guest reader, answered for GPUs identified by their host PCI addresses."""

    def __init__(self, ca: SimulatedCa, gpus: Sequence[str], faults: dict[str, dict[str, Any]] | None = None) -> None:
        self.ca = ca
        self.gpus = list(gpus)
        self.faults = faults or {}
        self._made: dict[str, SimulatedGpu] = {}

    @classmethod
    def of_node(cls, sim_root: Path, gpus: Sequence[str]) -> SimulatedGuestNvml:
        ca = shared_simulated_ca(sim_root / SIM_CA_FILE, datetime.now(UTC), create=False)
        try:
            faults = json.loads((sim_root / SIM_FAULTS_FILE).read_text())
        except FileNotFoundError:
            faults = {}
        return cls(ca, gpus, faults if isinstance(faults, dict) else {})

    @classmethod
    def verifier_side(cls, sim_root: Path) -> SimulatedGuestNvml:
        """The node's simulated GPUs as the verification service knows them: every GPU of the node minted, so its
        simulated OCSP responder can answer for each one's certificates."""
        from cc_gpu.host.sim import SimKernel  # noqa: PLC0415

        state = SimKernel(sim_root).load()
        gpus = sorted(b for b, arch in (state.get("architecture") or {}).items() if arch in ("hopper", "blackwell"))
        out = cls.of_node(sim_root, gpus)
        for bdf in gpus:
            out._gpu(bdf)
        return out

    def _gpu(self, bdf: str) -> SimulatedGpu:
        if bdf not in self._made:
            self._made[bdf] = self.ca.gpu(f"sim-gpu-{bdf}")  # the host-side simulated provider's identity
        return self._made[bdf]

    def __call__(self) -> SimulatedGuestNvml:
        return self  # a loader: `NvmlSessions(loader)` calls it for the module

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return self.gpus[index]

    def nvmlDeviceGetArchitecture(self, handle: str) -> int:
        return HOPPER

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: str, nonce: bytes) -> SimpleNamespace:
        knobs = self.faults.get(handle, {}) if isinstance(self.faults.get(handle), dict) else {}
        bdf = str(knobs.get("wrong_gpu") or handle)
        faults = Faults(**{k: v for k, v in knobs.items() if k in _FAULTS})
        report = self._gpu(bdf)._report(nonce, faults)
        return SimpleNamespace(attestationReport=report, attestationReportSize=len(report))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: str) -> SimpleNamespace:
        knobs = self.faults.get(handle, {}) if isinstance(self.faults.get(handle), dict) else {}
        bdf = str(knobs.get("wrong_gpu") or handle)
        faults = Faults(**{k: v for k, v in knobs.items() if k in _FAULTS})
        chain = self._gpu(bdf)._chain(faults)
        return SimpleNamespace(attestationCertChain=chain, attestationCertChainSize=len(chain))

    def rims(self, evidence: GuestEvidence) -> tuple[bytes, ...]:
        """The reference values of the simulated GPU whose device certificate signed `evidence`, as a RIM service
        would hand them out (a simulated GPU's reference values are its own; none for a GPU this node lacks)."""
        try:
            leaf = x509.load_pem_x509_certificates(evidence.cert_chain_pem)[0]
        except (ValueError, IndexError):
            return ()
        gpu = next((g for g in self._made.values() if g.leaf.cert.serial_number == leaf.serial_number), None)
        if gpu is None:
            return ()
        return (gpu._rim("driver", Faults()), gpu._rim("vbios", Faults()))
