"""Certificate revocation through OCSP, with an explicit mode: `online`, `cached` (air-gapped) or `off`.

What each mode trusts: `online` asks NVIDIA's responder (a fresh nonce per request) and trusts only that answer, or
one it got itself within the admin's short `online_cache` bound, so a revocation is seen within that bound; `cached`
trusts a stored response (fetched earlier or imported) for as long as the response itself says (thisUpdate..
nextUpdate, often days), so a revocation may go unseen for that long; `off` trusts the certificates without asking.

Requests use a SHA-384 CertID and a fresh nonce; a response counts only if it is signed by the issuer (or by a
responder certificate the issuer delegated with the OCSP-signing EKU), answers for exactly the certificate asked
about, and the verification time lies in [thisUpdate, nextUpdate]. Responses are cached by CertID for that window,
in memory or in a directory (the same layout `cc-gpu attest bundle import` fills), so `cached` mode serves an
air-gapped cluster from responses fetched elsewhere. The network is reached only through the injected transport.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from cc_gpu.attest.errors import OcspError, OcspUnavailableError
from cc_gpu.files import write_atomic

NVIDIA_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
OCSP_TIMEOUT_S = 10.0


class RevocationMode(StrEnum):
    ONLINE = "online"
    CACHED = "cached"
    OFF = "off"


class OcspTransport(Protocol):
    """POSTs a DER OCSP request and returns the DER response (the only network effect of this module)."""

    def post(self, url: str, body: bytes, timeout: float) -> bytes: ...


class OcspStore(Protocol):
    """Where DER responses are kept between verifications, keyed by `cert_id_key`."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, der: bytes) -> None: ...


class MemoryOcspStore:
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, der: bytes) -> None:
        with self._lock:
            self._data[key] = der


class DirectoryOcspStore:
    """`<dir>/<cert id key>.der`; writes go through a temporary file and a rename."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, key: str) -> bytes | None:
        try:
            return (self.path / f"{key}.der").read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OcspError(f"cannot read cached OCSP response {key}: {e}") from e

    def put(self, key: str, der: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / f"{key}.der", der, mode=0o644)


@dataclass(frozen=True)
class OcspStatus:
    """The answer for one certificate: `good`, `revoked` or `hold`, the window it holds for, and its source."""

    serial: int
    status: str
    this_update: datetime
    next_update: datetime
    source: str


def cert_id_key(cert: x509.Certificate, issuer: x509.Certificate) -> str:
    """The cache key: SHA-384 of the issuer's key (as in the CertID) and the serial number, in hex."""
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
    return f"{req.issuer_key_hash.hex()}-{cert.serial_number:x}"


def _key_hash(cert: x509.Certificate) -> bytes:
    """SHA-1 of the subject public key bits, as OCSP's ResponderID byKey names a responder (RFC 6960)."""
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _responder(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate:
    """The certificate whose key must have signed `resp`: the issuer itself, or a responder it delegated to."""
    if resp.responder_key_hash is not None:
        if resp.responder_key_hash == _key_hash(issuer):
            return issuer
        candidates = [c for c in resp.certificates if _key_hash(c) == resp.responder_key_hash]
    else:
        if resp.responder_name == issuer.subject:
            return issuer
        candidates = [c for c in resp.certificates if c.subject == resp.responder_name]
    if len(candidates) != 1:
        raise OcspError("OCSP response is signed by a responder that is neither the issuer nor delegated by it")
    delegate = candidates[0]
    try:
        delegate.verify_directly_issued_by(issuer)
        eku = delegate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as e:
        raise OcspError("OCSP responder certificate is not delegated by the issuer") from e
    if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
        raise OcspError("OCSP responder certificate lacks the OCSP-signing usage")
    return delegate


def _verify_response_signature(resp: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime) -> None:
    signer = _responder(resp, issuer)
    if signer is not issuer and not signer.not_valid_before_utc <= at <= signer.not_valid_after_utc:
        raise OcspError("OCSP responder certificate is not valid at the verification time")
    key = signer.public_key()
    algorithm = resp.signature_hash_algorithm
    if not isinstance(key, ec.EllipticCurvePublicKey) or algorithm is None:
        raise OcspError("OCSP response is not ECDSA-signed")
    try:
        key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algorithm))
    except InvalidSignature as e:
        raise OcspError("OCSP response signature does not verify") from e


def evaluate_response(  # noqa: PLR0917 - mirrors the question asked: which response, cert, issuer, when, nonce
    der: bytes, cert: x509.Certificate, issuer: x509.Certificate, at: datetime, nonce: bytes | None, source: str
) -> OcspStatus:
    """Decode and check one DER response for `cert`; raises OcspError when it does not answer validly."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise OcspError(f"OCSP response is not DER: {e}") from e
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"OCSP responder answered {resp.response_status.name}")
    _verify_response_signature(resp, issuer, at)
    expected = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
    matches = [
        single
        for single in resp.responses
        if single.serial_number == cert.serial_number
        and isinstance(single.hash_algorithm, hashes.SHA384)
        and single.issuer_key_hash == expected.issuer_key_hash
        and single.issuer_name_hash == expected.issuer_name_hash
    ]
    if len(matches) != 1:
        raise OcspError(f"OCSP response does not answer for serial {cert.serial_number:x} (SHA-384 CertID)")
    single = matches[0]
    if nonce is not None:
        try:
            got = resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound as e:
            raise OcspError("OCSP response lacks the nonce that was sent") from e
        if got != nonce:
            raise OcspError("OCSP response nonce does not match the request")
    this_update, next_update = single.this_update_utc, single.next_update_utc
    if next_update is None:
        raise OcspError("OCSP response has no nextUpdate; its validity cannot be bounded")
    if not this_update <= at <= next_update:
        raise OcspError(
            f"OCSP response is not current at {at.isoformat()} "
            f"(thisUpdate {this_update.isoformat()}, nextUpdate {next_update.isoformat()})"
        )
    if single.certificate_status == ocsp.OCSPCertStatus.GOOD:
        status = "good"
    elif single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        status = "hold" if single.revocation_reason == x509.ReasonFlags.certificate_hold else "revoked"
    else:
        raise OcspError(f"OCSP responder does not know certificate {cert.serial_number:x}")
    return OcspStatus(cert.serial_number, status, this_update, next_update, source)


class RevocationChecker:
    """Answers "is this certificate revoked at time T" by policy mode, using the store and (online) the transport."""

    def __init__(
        self,
        store: OcspStore | None = None,
        transport: OcspTransport | None = None,
        url: str = NVIDIA_OCSP_URL,
        nonce_source: Callable[[int], bytes] = os.urandom,
        online_cache: timedelta = timedelta(0),
    ) -> None:
        """`online_cache` bounds how long an answer this checker got from the responder stands in for asking again in
        `online` mode (the admin's setting; 0: ask every time). Responses only read from the store never count as an
        online answer: `cached` mode trusts them within their own thisUpdate..nextUpdate window, `online` does not."""
        self.store = store if store is not None else MemoryOcspStore()
        self.transport = transport
        self.url = url
        self._nonce = nonce_source
        self.online_cache = online_cache
        self._asked: dict[str, tuple[datetime, bytes]] = {}
        self._lock = threading.Lock()

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, at: datetime, mode: RevocationMode) -> OcspStatus:
        if mode is RevocationMode.OFF:
            raise ValueError("revocation is off; nothing to check")
        key = cert_id_key(cert, issuer)
        if mode is RevocationMode.CACHED:
            cached = self.store.get(key)
            if cached is None:
                raise OcspError(f"no cached OCSP response for serial {cert.serial_number:x}")
            return evaluate_response(cached, cert, issuer, at, None, "cache")
        with self._lock:
            recent = self._asked.get(key)
        if recent is not None and timedelta(0) <= at - recent[0] <= self.online_cache:
            with contextlib.suppress(OcspError):
                return evaluate_response(recent[1], cert, issuer, at, None, "online-recent")
        if self.transport is None:
            raise OcspUnavailableError("online revocation checking needs an OCSP transport")
        nonce = self._nonce(32)
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(cert, issuer, hashes.SHA384())
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
        )
        der = self.transport.post(self.url, request.public_bytes(Encoding.DER), OCSP_TIMEOUT_S)
        status = evaluate_response(der, cert, issuer, at, nonce, "online")
        self.store.put(key, der)
        with self._lock:
            self._asked[key] = (at, der)
        return status
