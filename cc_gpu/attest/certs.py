"""Certificate chains: decoding, path validation to a configured anchor, the report signature and the FWID.

NVIDIA chains do not fit a web-PKI validator (no SANs on CAs, validity to 9999, TCG extensions), so path validation
here is the small, explicit set of rules these chains need: each certificate is signed by the next, the last one by
an anchor from the trust store (a root carried in the evidence is accepted only if it is byte-identical to that
anchor), every certificate is ecdsa-with-SHA384 and valid at the verification time, issuers are CAs, and the path
has the expected length. Failures raise `ChainError` with a reason the verdict shows.

The FWID extension is read with a minimal DER walker: cryptography exposes unknown extensions only as raw bytes and
the project has no general ASN.1 library; the walker only reads (tag, length, value) triples with bounds checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cc_gpu.attest.errors import CertificateParseError
from cc_gpu.errors import AttestationError

FWID_OID_HOPPER = x509.ObjectIdentifier("2.23.133.5.4.1")
FWID_OID_BLACKWELL = x509.ObjectIdentifier("2.23.133.5.4.1.1")
_SHA384_OID_DER = bytes.fromhex("0609608648016503040202")


class ChainError(AttestationError):
    """The chain does not validate; `reason` says why (shown in the verdict)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ValidatedChain:
    """A validated path, leaf first, ending in the trust-store anchor; valid for times in [not_before, not_after]."""

    path: tuple[x509.Certificate, ...]
    not_before: datetime
    not_after: datetime

    @property
    def leaf(self) -> x509.Certificate:
        return self.path[0]

    def valid_at(self, at: datetime) -> bool:
        return self.not_before <= at <= self.not_after


def load_pem_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateParseError(f"certificate chain is not a PEM certificate list: {e}") from e
    return tuple(certs)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _is_self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _label(cert: x509.Certificate, position: int) -> str:
    return f"certificate {position} ({common_name(cert)!r})"


def _check_algorithms(cert: x509.Certificate, position: int) -> None:
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
        raise ChainError(f"{_label(cert, position)} is not signed with SHA-384")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ChainError(f"{_label(cert, position)} does not carry a P-384 key")


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer` issued `cert` (names chain and the signature verifies with the issuer's key)."""
    return _signed_by(cert, issuer)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


SignedBy = Callable[[x509.Certificate, x509.Certificate], bool]


def validate_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: datetime,
    expected_length: int,
    signed_by: SignedBy | None = None,
) -> ValidatedChain:
    """Validate `chain` (leaf first, possibly ending in a copy of the root) to one of `anchors` at time `at`.

    `signed_by` may memoise signature checks (intermediates are shared between chains); default: check each time.
    """
    signed_by = signed_by or _signed_by
    if not chain:
        raise ChainError("empty certificate chain")
    certs = list(chain)
    anchor_ders = {_der(a) for a in anchors}
    while len(certs) > 1 and _is_self_issued(certs[-1]):
        root = certs.pop()
        if _der(root) not in anchor_ders:
            raise ChainError(f"root {common_name(root)!r} in the evidence is not a configured trust anchor")
    for i, cert in enumerate(certs[:-1]):
        if not signed_by(cert, certs[i + 1]):
            raise ChainError(f"certificate {i} ({common_name(cert)!r}) is not issued by certificate {i + 1}")
    top = certs[-1]
    anchor = next((a for a in anchors if a.subject == top.issuer and signed_by(top, a)), None)
    if anchor is None:
        raise ChainError(f"certificate {len(certs) - 1} ({common_name(top)!r}) is not issued by a trusted root")
    path = (*certs, anchor)
    if len(path) != expected_length:
        raise ChainError(f"chain has {len(path)} certificates including the root, expected {expected_length}")
    for i, cert in enumerate(path):
        _check_algorithms(cert, i)
        if i > 0 and not _is_ca(cert):
            raise ChainError(f"{_label(cert, i)} issues certificates but is not a CA")
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ChainError(
                f"{_label(cert, i)} is not valid at {at.isoformat()} (valid {cert.not_valid_before_utc.isoformat()} "
                f".. {cert.not_valid_after_utc.isoformat()})"
            )
    return ValidatedChain(
        path=path,
        not_before=max(c.not_valid_before_utc for c in path),
        not_after=min(c.not_valid_after_utc for c in path),
    )


def verify_report_signature(leaf: x509.Certificate, signed: bytes, signature: bytes) -> bool:
    """ECDSA P-384 / SHA-384 over `signed`; `signature` is raw r||s (48 bytes each, big-endian)."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) != 96:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big"))
    try:
        key.verify(der, signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        return False
    return True


# --- FWID -----------------------------------------------------------------------------------------------------


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """Split a DER byte string into its (tag, value) items; raises ValueError on any malformation."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER header")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise ValueError("truncated DER value")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


def _fwid_hopper(value: bytes) -> bytes | None:
    # SEQ { INT 1, SubjectPublicKeyInfo, SEQ { OID sha384, OCTET STRING (48) } }
    ((tag, body),) = _der_items(value)
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    for inner_tag, inner in _der_items(body):
        if inner_tag != 0x30:
            continue
        parts = _der_items(inner)
        if len(parts) == 2 and parts[0] == (0x06, _SHA384_OID_DER[2:]) and parts[1][0] == 0x04:
            return parts[1][1]
    return None


def _fwid_blackwell(value: bytes) -> bytes | None:
    # DICE TcbInfo: SEQ { ..., [6] IMPLICIT SEQUENCE OF FWID { OID hashAlg, OCTET STRING digest }, ... }
    ((tag, body),) = _der_items(value)
    if tag != 0x30:
        raise ValueError("not a SEQUENCE")
    for inner_tag, inner in _der_items(body):
        if inner_tag == 0xA6:
            fwids = _der_items(inner)
            if fwids and fwids[0][0] == 0x30:
                parts = _der_items(fwids[0][1])
                if len(parts) == 2 and parts[1][0] == 0x04:
                    return parts[1][1]
    return None


def leaf_fwid(leaf: x509.Certificate) -> bytes | None:
    """The FWID digest in the leaf certificate (Blackwell TcbInfo or Hopper encoding), or None when absent."""
    for oid, reader in ((FWID_OID_BLACKWELL, _fwid_blackwell), (FWID_OID_HOPPER, _fwid_hopper)):
        try:
            ext = leaf.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else b""
        try:
            return reader(raw)
        except ValueError as e:
            raise ChainError(f"FWID extension {oid.dotted_string} is malformed: {e}") from e
    return None
