"""The attestation layer's exception subtree.

Parsing and verification failures are distinct types so that callers can tell "this input is not evidence at all"
(`EvidenceParseError`, with the field and byte offset) from "the evidence is well formed but the trust material,
RIM or policy could not be loaded" (the other types). A *rejected* verdict is not an exception: it is a `Verdict`
whose checks say why. Exceptions are for input that cannot be judged.
"""

from __future__ import annotations

from cc_gpu.errors import AttestationError, ConfigError, TemporaryError


class EvidenceParseError(AttestationError):
    """The attestation report is malformed; names the field and the byte offset where parsing stopped."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        super().__init__(f"malformed attestation report: {field} at offset {offset}: {reason}")
        self.field = field
        self.offset = offset
        self.reason = reason


class UnsupportedOpaqueFormatError(EvidenceParseError):
    """The opaque data is in a format this verifier does not know (an NVDAOD profile or major version beyond it)."""


class CertificateParseError(AttestationError):
    """A certificate or certificate chain could not be decoded."""


class TrustStoreError(AttestationError):
    """The trust store is missing, unreadable, or holds an anchor it must refuse (a simulated root)."""


class RimError(AttestationError):
    """A reference integrity manifest could not be parsed or is structurally invalid."""


class RimFetchError(TemporaryError, AttestationError):
    """A RIM source could not deliver a RIM (network error, mirror unavailable); retrying may help."""


class OcspError(AttestationError):
    """An OCSP response could not be decoded or does not answer the question asked."""


class OcspUnavailableError(TemporaryError, AttestationError):
    """The OCSP responder could not be reached; retrying may help."""


class PolicyError(ConfigError):
    """The attestation policy file is invalid."""


class TokenError(AttestationError):
    """A verdict token is malformed, unsigned, signed by an unknown key, expired, or carries the wrong nonce."""


class BundleError(AttestationError):
    """An offline bundle (RIMs and OCSP responses carried into an air-gapped cluster) is malformed."""
