"""GPU attestation evidence from the host: NVML's report and certificate chain, and the temporary rebind that needs.

NVML answers only for a GPU on the `nvidia` driver, so evidence is collected before the bind to vfio-pci. Two calls:
`nvmlDeviceGetConfComputeGpuAttestationReport` with a caller-chosen 32-byte nonce (the SPDM GET_MEASUREMENTS request
and response, as the verifier parses them) and `nvmlDeviceGetConfComputeGpuCertificate` (the attestation certificate
chain, PEM, leaf first). The module is loaded lazily and injected, so tests hand in a fake module object that returns
the real ctypes structures. Each collection is its own NVML session (`nvmlInit` ... `nvmlShutdown`): an initialised
NVML keeps `/dev/nvidia*` open, and the binder refuses to move a GPU that a process (this one included) holds open.

For a GPU already on vfio-pci, `HostDriverSwitch` can move it to `nvidia` for the duration of an attestation and back
again. That is an explicit opt-in of the node admin and the claim, and it is refused outright when the node has
NVSwitches: rebinding a GPU of an NVLink fabric to another driver is known to hang the fabric manager.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cc_gpu.errors import HostError, PermanentError, TemporaryError
from cc_gpu.host import pci
from cc_gpu.host.host import Host
from cc_gpu.host.pciids import NVIDIA

log = logging.getLogger(__name__)

NONCE_SIZE = 32
HOST_DRIVER = "nvidia"
CLASS_BRIDGE_OTHER = 0x0680  # NVSwitch: "bridge, other"
NVSWITCH_DEVICE_IDS = frozenset({0x1AF1, 0x22A3, 0x22A4})


class EvidenceUnavailableError(HostError, TemporaryError):
    """The GPU could not give evidence now (NVML missing, GPU not on nvidia, NVML call failed)."""


class RebindRefusedError(HostError, PermanentError):
    """A temporary rebind to the host driver is not allowed here (NVSwitch fabric, or the GPU is not ours to move)."""


@dataclass(frozen=True)
class RawEvidence:
    report: bytes  # SPDM request + response as NVML returns it
    cert_chain_pem: bytes


def _bytes(array: Any, size: int, what: str) -> bytes:
    if not isinstance(size, int) or size <= 0 or size > len(array):
        raise EvidenceUnavailableError(f"NVML returned an impossible {what} size {size!r}")
    return bytes(array[:size])


class NvmlEvidenceReader:
    """Evidence through `pynvml`; `loader` returns the module (a fake one in tests), initialised per collection."""

    def __init__(self, loader: Callable[[], Any] | None = None) -> None:
        self._loader = loader or _load_pynvml
        self._module: Any = None
        self._lock = threading.Lock()

    def _nvml(self) -> Any:
        with self._lock:
            if self._module is None:
                try:
                    self._module = self._loader()
                except Exception as e:  # NVML missing is a normal state of a node, not a crash
                    raise EvidenceUnavailableError(f"NVML is not available: {type(e).__name__}: {e}") from e
            return self._module

    def collect(self, bdf: str, nonce: bytes) -> RawEvidence:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"an attestation nonce is {NONCE_SIZE} bytes")
        nv = self._nvml()
        with self._lock:  # one NVML session at a time; closed again so no /dev/nvidia* stays open
            try:
                nv.nvmlInit()
            except Exception as e:
                raise EvidenceUnavailableError(f"NVML could not start: {type(e).__name__}: {e}") from e
            try:
                handle = nv.nvmlDeviceGetHandleByPciBusId(bdf)
                report = nv.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
                certs = nv.nvmlDeviceGetConfComputeGpuCertificate(handle)
            except Exception as e:  # pynvml raises NVMLError subclasses per return code
                raise EvidenceUnavailableError(f"NVML could not attest {bdf}: {type(e).__name__}: {e}") from e
            finally:
                with contextlib.suppress(Exception):
                    nv.nvmlShutdown()
        return RawEvidence(
            report=_bytes(report.attestationReport, report.attestationReportSize, "attestation report"),
            cert_chain_pem=_bytes(certs.attestationCertChain, certs.attestationCertChainSize, "certificate chain"),
        )


def _load_pynvml() -> Any:
    import pynvml  # noqa: PLC0415 - optional, heavy, absent on most machines

    return pynvml


def current_driver(host: Host, bdf: str) -> str | None:
    return pci.read_driver(host.io, host.roots, bdf)


def nvswitch_present(host: Host) -> bool:
    """Whether the node has NVSwitches (an NVLink fabric), from the PCI IDs in sysfs."""
    for bdf in pci.list_functions(host.io, host.roots):
        try:
            fn = pci.read_function(host.io, host.roots, bdf)
        except (OSError, HostError):
            continue
        if fn.vendor_id == NVIDIA and (fn.class16 == CLASS_BRIDGE_OTHER or fn.device_id in NVSWITCH_DEVICE_IDS):
            return True
    return False


class HostDriverSwitch:
    """Moves one GPU from vfio-pci to the host driver and back, for the length of an attestation."""

    def __init__(self, host: Host, timeout_s: float = 10.0) -> None:
        self.host = host
        self.timeout_s = timeout_s

    def _write(self, path: Any, data: str) -> None:
        try:
            self.host.io.write_text(path, data)
        except OSError as e:
            raise EvidenceUnavailableError(f"temporary rebind failed writing {path}: {e.strerror}") from e

    def _wait_driver(self, bdf: str, driver: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while current_driver(self.host, bdf) != driver:
            if time.monotonic() > deadline:
                raise EvidenceUnavailableError(f"{bdf} did not reach driver {driver} in {self.timeout_s:.0f} s")
            time.sleep(0.01)

    def _move(self, bdf: str, from_driver: str | None, to_driver: str) -> None:
        roots = self.host.roots
        if from_driver is not None:
            self._write(roots.pci_drivers / from_driver / "unbind", bdf)
        self._write(pci.device_dir(roots, bdf) / "driver_override", to_driver)
        self._write(roots.pci_drivers / to_driver / "bind", bdf)
        self._wait_driver(bdf, to_driver)

    @contextlib.contextmanager
    def on_host_driver(self, bdf: str) -> Iterator[None]:
        """Run the body with `bdf` on the host driver, then put it back on the vfio driver it had."""
        if nvswitch_present(self.host):
            raise RebindRefusedError(
                "a temporary rebind to nvidia is refused on NVLink/NVSwitch systems "
                "(rebinding there can hang the fabric)"
            )
        original = current_driver(self.host, bdf)
        if original is None or not original.startswith("vfio"):
            raise RebindRefusedError(f"{bdf} is on {original or 'no driver'}, not on a vfio driver")
        log.info("temporary rebind for attestation", extra={"bdf": bdf, "from": original, "to": HOST_DRIVER})
        self._move(bdf, original, HOST_DRIVER)
        try:
            yield
        finally:
            self._move(bdf, HOST_DRIVER, original)
