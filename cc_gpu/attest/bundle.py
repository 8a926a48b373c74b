"""Offline bundles: RIMs and OCSP responses fetched on a connected machine, carried into an air-gapped cluster.

Bundle layout (the same layout the verifier's directory sources read, so an imported store is used as is):

    <bundle>/rims/<RIM id>[.swidtag|.xml]    e.g. NV_GPU_DRIVER_GH100_550.90.07.swidtag
    <bundle>/ocsp/<anything>.der             DER OCSP responses (SHA-384 CertIDs)

Import checks everything before it lands in the store: each RIM must verify (signature and signing chain to the
trust store's RIM root, at the import time), each OCSP response must decode, be successful and use a SHA-384 CertID;
responses are stored under the key the verifier looks them up by (`<issuer key hash>-<serial>.der`), whatever their
name in the bundle. Nothing is half-imported: a bad file is reported and skipped, good files are written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.x509 import ocsp

from cc_gpu.attest.errors import BundleError
from cc_gpu.attest.rim import verify_rim
from cc_gpu.attest.sources import RIM_SUFFIXES
from cc_gpu.attest.trust import TrustStore
from cc_gpu.errors import AttestationError
from cc_gpu.files import write_atomic


@dataclass(frozen=True)
class ImportReport:
    rims: tuple[str, ...]
    ocsp: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o644)


def ocsp_key(der: bytes) -> str:
    """The store key for a DER response: `<SHA-384 issuer key hash>-<serial hex>`."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise BundleError(f"not a DER OCSP response: {e}") from e
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise BundleError(f"OCSP response status is {resp.response_status.name}")
    singles = list(resp.responses)
    if len(singles) != 1 or not isinstance(singles[0].hash_algorithm, hashes.SHA384):
        raise BundleError("OCSP response must answer for exactly one certificate with a SHA-384 CertID")
    return f"{singles[0].issuer_key_hash.hex()}-{singles[0].serial_number:x}"


def import_bundle(bundle: Path, store: Path, trust: TrustStore, at: datetime) -> ImportReport:
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} is not a directory")
    rims: list[str] = []
    responses: list[str] = []
    rejected: list[tuple[str, str]] = []
    for path in sorted((bundle / "rims").glob("*")):
        name = path.name
        for suffix in RIM_SUFFIXES[1:]:
            name = name.removesuffix(suffix)
        if not path.is_file() or not name.startswith("NV_GPU_"):
            rejected.append((str(path), "not a file named by RIM id (NV_GPU_...)"))
            continue
        try:
            content = path.read_bytes()
            verify_rim(content, trust, at)
        except (OSError, AttestationError) as e:
            rejected.append((str(path), str(e)))
            continue
        _write(store / "rims" / f"{name}.swidtag", content)
        rims.append(name)
    for path in sorted((bundle / "ocsp").glob("*.der")):
        try:
            der = path.read_bytes()
            key = ocsp_key(der)
        except (OSError, BundleError) as e:
            rejected.append((str(path), str(e)))
            continue
        _write(store / "ocsp" / f"{key}.der", der)
        responses.append(key)
    return ImportReport(tuple(rims), tuple(responses), tuple(rejected))
