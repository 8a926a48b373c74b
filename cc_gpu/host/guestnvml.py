"""GPU evidence from inside the confidential VM: every GPU the guest's NVML sees, for one nonce.

A GPU in CC mode answers attestation requests only to the driver inside the VM, so this reader runs there (`cc-gpu
attest collect`). It needs only NVML: the same two calls as the host reader (`gpuevidence.py`), for every GPU the
guest's driver manages (the guest's PCI addresses are the VM's, not the host's, so GPUs are enumerated by index).
The module is loaded lazily and injected, so tests hand in a simulated guest NVML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cc_gpu.host.gpuevidence import NONCE_SIZE, EvidenceUnavailableError, _bytes
from cc_gpu.host.nvml import NvmlSessions, NvmlUnavailableError

# nvmlDeviceGetArchitecture's values (nvml.h NVML_DEVICE_ARCH_*), named as NVIDIA's evidence lists name them.
ARCHITECTURES = {9: "HOPPER", 10: "BLACKWELL"}


@dataclass(frozen=True)
class GuestGpuEvidence:
    report: bytes
    cert_chain_pem: bytes
    arch: str


class GuestNvmlReader:
    def __init__(self, loader: Callable[[], Any] | None = None) -> None:
        self._sessions = NvmlSessions(loader)

    def collect_all(self, nonce: bytes) -> list[GuestGpuEvidence]:
        """Evidence of every GPU this VM's NVML manages, each answering `nonce`."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"an attestation nonce is {NONCE_SIZE} bytes")
        out = []
        try:
            with self._sessions.session() as nv:
                try:
                    count = int(nv.nvmlDeviceGetCount())
                    for index in range(count):
                        handle = nv.nvmlDeviceGetHandleByIndex(index)
                        arch = ARCHITECTURES.get(int(nv.nvmlDeviceGetArchitecture(handle)), "UNKNOWN")
                        report = nv.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                        certs = nv.nvmlDeviceGetConfComputeGpuCertificate(handle)
                        out.append(GuestGpuEvidence(
                            _bytes(report.attestationReport, report.attestationReportSize, "attestation report"),
                            _bytes(certs.attestationCertChain, certs.attestationCertChainSize, "certificate chain"),
                            arch))
                except EvidenceUnavailableError:
                    raise
                except Exception as e:  # pynvml raises NVMLError subclasses per return code
                    raise EvidenceUnavailableError(f"NVML could not attest: {type(e).__name__}: {e}") from e
        except NvmlUnavailableError as e:
            raise EvidenceUnavailableError(str(e)) from e
        if not out:
            raise EvidenceUnavailableError("NVML in this VM manages no GPU")
        return out
