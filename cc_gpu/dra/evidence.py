"""Evidence providers behind one interface: NVML on the node, a directory of evidence collected elsewhere, simulated.

A provider answers "give me this GPU's evidence for this nonce". The NVML and simulated providers take the nonce
(fresh evidence) but need the GPU on the `nvidia` driver; the directory provider serves evidence collected elsewhere
with its own nonce, so only its age can make it acceptable. The simulated provider mints evidence with the real byte
layout signed by a test CA made at start-up (`cc_gpu.attest.sim`); its trust store is the only one that accepts that
CA. Bad-evidence knobs for tests and the demo are read from a JSON file next to the simulated node, per PCI address:

    {"0000:18:00.0": {"tamper_measurement": 5, "missing_rim": "vbios", "revoked": true}}
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cc_gpu.attest.ocsp import OcspTransport
from cc_gpu.attest.sim import Faults, SimulatedCa, SimulatedGpu
from cc_gpu.attest.trust import TrustStore
from cc_gpu.files import write_atomic
from cc_gpu.host.ccmode import HIDDEN_FROM_HOST
from cc_gpu.host.gpuevidence import EvidenceUnavailableError, NvmlEvidenceReader

Clock = Callable[[], datetime]
SIM_FAULTS_FILE = "attestation-faults.json"


@dataclass(frozen=True)
class Evidence:
    """One GPU's evidence as collected: what the verifier needs, plus where and when it came from."""

    bdf: str
    report: bytes
    cert_chain: bytes
    nonce: bytes  # the nonce the report answers (fresh, or the one used when it was collected elsewhere)
    collected_at: datetime
    source: str  # nvml | directory | simulated
    rims: tuple[bytes, ...] = ()  # RIMs that came with the evidence (none: the verifier's RIM source answers)


class EvidenceProvider(Protocol):
    name: str
    takes_nonce: bool  # True: evidence answers the caller's nonce; False: evidence carries its own
    needs_host_driver: bool  # True: only a GPU on the `nvidia` driver can give evidence

    def collect(self, bdf: str, nonce: bytes) -> Evidence:
        """This GPU's evidence; `EvidenceUnavailableError` when it has none to give now."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class NvmlProvider:
    name = "nvml"
    takes_nonce = True
    needs_host_driver = True

    def __init__(self, reader: NvmlEvidenceReader, clock: Clock = _utc_now) -> None:
        self.reader = reader
        self.clock = clock

    def collect(self, bdf: str, nonce: bytes) -> Evidence:
        raw = self.reader.collect(bdf, nonce)
        return Evidence(bdf, raw.report, raw.cert_chain_pem, nonce, self.clock(), self.name)


class DirectoryProvider:
    """`<dir>/<PCI address>/` holding `report.hex` (or `report.bin`), `cert_chain.pem`, `nonce.hex`, and optionally
    `collected_at` (ISO-8601; default: the report file's modification time) and `rims/*.swidtag`."""

    name = "directory"
    takes_nonce = False
    needs_host_driver = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise EvidenceUnavailableError(f"cannot read evidence file {path}: {e.strerror}") from e

    def collect(self, bdf: str, nonce: bytes) -> Evidence:
        base = self.root / bdf
        if not base.is_dir():
            raise EvidenceUnavailableError(f"no collected evidence for {bdf} under {self.root}")
        report_path = base / "report.hex" if (base / "report.hex").exists() else base / "report.bin"
        report = self._read(report_path)
        chain = self._read(base / "cert_chain.pem")
        try:
            own_nonce = bytes.fromhex(self._read(base / "nonce.hex").decode("ascii").strip())
        except (ValueError, UnicodeDecodeError) as e:
            raise EvidenceUnavailableError(f"{base / 'nonce.hex'} is not hex") from e
        stamp = base / "collected_at"
        try:
            if stamp.exists():
                collected = datetime.fromisoformat(self._read(stamp).decode("ascii").strip().replace("Z", "+00:00"))
            else:
                collected = datetime.fromtimestamp(report_path.stat().st_mtime, UTC)
        except (ValueError, UnicodeDecodeError) as e:
            raise EvidenceUnavailableError(f"{stamp} is not an ISO-8601 time") from e
        if collected.tzinfo is None:
            raise EvidenceUnavailableError(f"{stamp} needs a UTC offset")
        rims = tuple(self._read(p) for p in sorted((base / "rims").glob("*")) if p.is_file())
        return Evidence(bdf, report, chain, own_nonce, collected, self.name, rims)


_FAULT_FIELDS = {f.name for f in fields(Faults)}
SIM_CA_FILE = "attestation-sim-ca.json"


def shared_simulated_ca(path: Path, now: datetime, *, create: bool = True) -> SimulatedCa:
    """The simulated node's test CA, shared by its processes (plugin, simulated guest, verification service): read
    from `path`, or made and written there (0600) by the plugin, the first process that needs it."""
    try:
        return SimulatedCa.load(path.read_bytes())
    except FileNotFoundError:
        if not create:
            raise EvidenceUnavailableError(f"no simulated node's CA at {path}: start the plugin on it first") from None
    except (OSError, ValueError, KeyError) as e:
        raise EvidenceUnavailableError(f"simulated CA file {path} is unreadable: {e}") from e
    ca = SimulatedCa.create(now)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, ca.save(), mode=0o600)
    return ca


class SimulatedProvider:
    """Per-GPU simulated evidence from one test CA; RIMs are served as a RIM service would (`rim_source`)."""

    name = "simulated"
    takes_nonce = True
    needs_host_driver = True

    def __init__(self, faults_file: Path | None = None, clock: Clock = _utc_now,
                 cc_mode_of: Callable[[str], str] | None = None, ca_file: Path | None = None) -> None:
        self.clock = clock
        self.cc_mode_of = cc_mode_of  # the simulated GPU's CC mode: in devtools mode its evidence says so
        self.ca = shared_simulated_ca(ca_file, clock()) if ca_file is not None else SimulatedCa.create(clock())
        self.faults_file = faults_file
        self._gpus: dict[str, SimulatedGpu] = {}
        self._rims: dict[tuple[str, str], bytes] = {}  # (bdf, rim id) -> RIM, minted once per GPU and fault set
        self._lock = threading.Lock()

    def trust_store(self) -> TrustStore:
        return self.ca.trust_store()

    def ocsp_transport(self) -> OcspTransport:
        return self.ca.ocsp_responder()

    def knobs(self, bdf: str) -> dict[str, Any]:
        if self.faults_file is None:
            return {}
        try:
            data = json.loads(self.faults_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise EvidenceUnavailableError(f"simulated fault file {self.faults_file} is unreadable: {e}") from e
        value = data.get(bdf, {}) if isinstance(data, dict) else {}
        return value if isinstance(value, dict) else {}

    def gpu(self, bdf: str) -> SimulatedGpu:
        with self._lock:
            if bdf not in self._gpus:
                self._gpus[bdf] = self.ca.gpu(f"sim-gpu-{bdf}")
            return self._gpus[bdf]

    def collect(self, bdf: str, nonce: bytes) -> Evidence:
        mode = self.cc_mode_of(bdf) if self.cc_mode_of is not None else None
        if mode in HIDDEN_FROM_HOST:
            # As the hardware: a GPU in CC mode answers attestation requests only to the driver inside the VM.
            raise EvidenceUnavailableError(
                f"GPU {bdf} is in CC mode {mode!r} and no longer answers the host driver; its evidence can only be "
                "collected inside the confidential VM (the guest attestation path)")
        knobs = self.knobs(bdf)
        gpu = self.gpu(bdf)
        if knobs.get("revoked"):
            self.ca.revoke(gpu.brom.cert)
        faults = Faults(**{k: v for k, v in knobs.items() if k in _FAULT_FIELDS})
        if mode == "devtools":
            faults = replace(faults, devtools=True)
        # The report answers the fresh nonce every time; RIMs are static per driver/VBIOS version (a RIM service
        # hands out the same bytes), so they are minted once per GPU and fault set, which also keeps the verifier's
        # verified-RIM cache warm as it is on a real node.
        report = gpu._report(nonce, faults)
        chain = gpu._chain(faults)
        missing = knobs.get("missing_rim")
        rims: list[bytes] = []
        for kind in ("driver", "vbios"):
            if missing in (kind, "both"):
                continue
            key = (bdf, f"{kind}/{faults}")
            with self._lock:
                content = self._rims.get(key)
            if content is None:
                content = gpu._rim(kind, faults)
                with self._lock:
                    content = self._rims.setdefault(key, content)
            rims.append(content)
        return Evidence(bdf, report, chain, nonce, self.clock(), self.name, tuple(rims))
