"""Reference integrity manifests (RIMs): hardened parsing, XMLDSig verification, golden values, and a cache.

A RIM is an ISO SWID tag with one enveloped XMLDSig signature. The order of work matters: the document is parsed
with entities, DTDs and network access off; its shape is checked (exactly one Signature, reference URI "", only the
enveloped + c14n 1.1 transforms, ecdsa-sha384 / sha384); the embedded signing chain is validated to the RIM root from
the trust store at the verification time; signxml verifies the signature with that validated leaf as the only
acceptable key; and golden values are read only from the tree signxml returns as signed. RIMs are static per
driver/VBIOS version, so a verified RIM is cached by the SHA-256 of its bytes together with the time window in which
its chain is valid and the trust store it was verified against.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography import x509
from lxml import etree  # type: ignore[import-untyped]
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from cc_gpu.attest.certs import ChainError, ValidatedChain, validate_chain
from cc_gpu.attest.errors import RimError
from cc_gpu.attest.trust import TrustStore
from cc_gpu.errors import AttestationError

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
HASH_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
TCG_NS = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
C14N_11 = "http://www.w3.org/2006/12/xml-c14n11"
ALLOWED_TRANSFORMS = ((ENVELOPED, C14N_11), (ENVELOPED,))
RIM_CHAIN_LENGTH = 4
MAX_RIM_BYTES = 4 * 1024 * 1024

_NS = {"swid": SWID_NS, "ds": DSIG_NS}
_HASH_ATTRS = tuple(f"{{{HASH_NS}}}Hash{n}" for n in range(64))
_RESOURCE = f"{{{SWID_NS}}}Resource"
_SIG_CONFIG_METHODS = frozenset({SignatureMethod.ECDSA_SHA384})
_SIG_CONFIG_DIGESTS = frozenset({DigestAlgorithm.SHA384})


class RimSignatureError(AttestationError):
    """The RIM's signature or signing chain does not verify (a rejection, reported in the verdict)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class GoldenMeasurement:
    """One `Payload/Resource`: a 0-based index, whether it is checked, and its acceptable SHA-384 values."""

    index: int
    active: bool
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True)
class VerifiedRim:
    """A RIM whose signature and chain verified; everything here was read from the signed tree."""

    digest: str
    tag_id: str
    version: str
    manufacturer_id: str | None
    measurements: Mapping[int, GoldenMeasurement]
    chain: ValidatedChain

    @property
    def signer_chain(self) -> tuple[x509.Certificate, ...]:
        return self.chain.path


def hardened_parser() -> etree.XMLParser:
    """No entity expansion, no DTD loading, no network, no huge trees."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def _parse(content: bytes) -> etree._Element:
    if len(content) > MAX_RIM_BYTES:
        raise RimError(f"RIM is {len(content)} bytes, larger than the {MAX_RIM_BYTES} allowed")
    try:
        tree = etree.fromstring(content, hardened_parser()).getroottree()
    except etree.XMLSyntaxError as e:
        raise RimError(f"RIM is not well-formed XML: {e}") from e
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise RimError("RIM carries a DOCTYPE; refused")
    root = tree.getroot()
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise RimError(f"RIM root element is {root.tag!r}, not a SWID SoftwareIdentity")
    return root


def _check_signature_shape(root: etree._Element) -> list[x509.Certificate]:
    sigs = root.findall(".//ds:Signature", _NS)
    if len(sigs) != 1 or sigs[0].getparent() is not root:
        raise RimError(f"RIM must carry exactly one enveloped Signature, found {len(sigs)}")
    sig = sigs[0]
    refs = sig.findall("ds:SignedInfo/ds:Reference", _NS)
    if len(refs) != 1 or refs[0].get("URI") != "":
        raise RimError('RIM signature must have exactly one Reference with URI ""')
    transforms = tuple(t.get("Algorithm") for t in refs[0].findall("ds:Transforms/ds:Transform", _NS))
    if transforms not in ALLOWED_TRANSFORMS:
        raise RimError(f"RIM signature uses unexpected transforms {transforms}")
    certs: list[x509.Certificate] = []
    for elem in sig.findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS):
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode("".join((elem.text or "").split()))))
        except (ValueError, binascii.Error) as e:
            raise RimError(f"RIM embeds an undecodable certificate: {e}") from e
    if not certs:
        raise RimError("RIM signature carries no X509 certificates")
    return certs


def _golden(root: etree._Element) -> tuple[str, str, str | None, dict[int, GoldenMeasurement]]:
    meta = root.find("swid:Meta", _NS)
    version = None if meta is None else meta.get("colloquialVersion")
    if not version:
        raise RimError("RIM has no Meta@colloquialVersion")
    manufacturer = None if meta is None else meta.get(f"{{{TCG_NS}}}FirmwareManufacturerId")
    payload = root.find("swid:Payload", _NS)
    if payload is None:
        raise RimError("RIM has no Payload")
    golden: dict[int, GoldenMeasurement] = {}
    for res in payload.iterchildren(_RESOURCE):
        try:
            index = int(res.get("index", ""))
            count = int(res.get("alternatives", ""))
            size = int(res.get("size", ""))
        except ValueError as e:
            raise RimError(f"RIM Resource has a non-integer index, alternatives or size: {e}") from e
        active_text = res.get("active", "")
        if active_text not in ("True", "False", "true", "false"):
            raise RimError(f"RIM Resource {index} has active={active_text!r}")
        if index < 0 or size != 48 or not 1 <= count <= 64:
            raise RimError(f"RIM Resource {index}: index, size ({size}) or alternatives ({count}) out of range")
        if index in golden:
            raise RimError(f"RIM lists index {index} twice")
        values = []
        for n in range(count):
            text = res.get(_HASH_ATTRS[n])
            if text is None or len(text) != 96:
                raise RimError(f"RIM Resource {index} lacks a 48-byte Hash{n}")
            try:
                values.append(bytes.fromhex(text))
            except ValueError as e:
                raise RimError(f"RIM Resource {index} Hash{n} is not hex") from e
        golden[index] = GoldenMeasurement(index, active_text.lower() == "true", tuple(values))
    if not golden:
        raise RimError("RIM has no measurements")
    return root.get("tagId", ""), version, manufacturer, golden


ChainValidator = Callable[[Sequence[x509.Certificate], Sequence[x509.Certificate], datetime, int], ValidatedChain]


def verify_rim(
    content: bytes, trust: TrustStore, at: datetime, chain_validator: ChainValidator = validate_chain
) -> VerifiedRim:
    """Parse and verify one RIM. Raises RimError (malformed) or RimSignatureError (does not verify).

    `chain_validator` lets a caller reuse validated chains (driver and VBIOS RIMs share one signing chain).
    """
    root = _parse(content)
    certs = _check_signature_shape(root)
    try:
        chain = chain_validator(certs, trust.rim_roots, at, RIM_CHAIN_LENGTH)
    except ChainError as e:
        raise RimSignatureError(f"RIM signing chain: {e.reason}") from e
    config = SignatureConfiguration(
        require_x509=True,
        location="./",
        expect_references=1,
        signature_methods=_SIG_CONFIG_METHODS,
        digest_algorithms=_SIG_CONFIG_DIGESTS,
        verification_time=at,
    )
    try:
        result = XMLVerifier().verify(root, x509_cert=chain.leaf, expect_config=config, parser=hardened_parser())
    except (SignXMLException, etree.LxmlError) as e:  # lxml raises e.g. C14NError on relative namespace URIs
        raise RimSignatureError(f"RIM signature does not verify: {e}") from e
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None:
        raise RimSignatureError("RIM signature did not yield exactly one signed document")
    tag_id, version, manufacturer, golden = _golden(signed)
    return VerifiedRim(
        digest=hashlib.sha256(content).hexdigest(),
        tag_id=tag_id,
        version=version,
        manufacturer_id=manufacturer,
        measurements=MappingProxyType(golden),
        chain=chain,
    )


class RimCache:
    """Verified RIMs by (content SHA-256, trust store); an entry serves any time inside its chain's validity."""

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: dict[tuple[str, str], VerifiedRim] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def verify(
        self,
        content: bytes,
        trust: TrustStore,
        at: datetime,
        trust_id: str | None = None,
        chain_validator: ChainValidator = validate_chain,
    ) -> VerifiedRim:
        key = (hashlib.sha256(content).hexdigest(), trust_id or trust.fingerprint())
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit.chain.valid_at(at):
            return hit
        rim = verify_rim(content, trust, at, chain_validator)
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = rim
        return rim


def peek_version(content: bytes) -> str | None:
    """The unverified `colloquialVersion`, used only to route an explicitly given RIM to driver or VBIOS.

    Nothing read here is trusted: the routed RIM is then fully verified and its signed version checked again.
    """
    try:
        root = _parse(content)
    except RimError:
        return None
    meta = root.find("swid:Meta", _NS)
    return None if meta is None else meta.get("colloquialVersion")
