"""Simulated GPU evidence: the real byte layout, signed by a test CA hierarchy minted at runtime.

Simulated GPUs (tests, the demo, the plugin's simulated node) need evidence that exercises every code path real
evidence takes: an SPDM 1.1 report signed with a P-384 leaf key, a five-certificate device chain with the FWID
extension, a four-certificate RIM signing chain, and driver and VBIOS RIMs signed with XMLDSig. `SimulatedCa.create()`
makes fresh keys each time (nothing is ever written into the package); every certificate it mints carries the
`SIMULATED_MARKER` organisation, which every production trust store refuses. `Faults` has a knob for each kind of
bad evidence, and `SimOcspResponder` is an OCSP responder double speaking DER, so revocation is tested end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from lxml import etree  # type: ignore[import-untyped]
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from cc_gpu.attest.certs import FWID_OID_HOPPER
from cc_gpu.attest.evidence import NVDEC0_DISABLED, NVDEC0_ENABLED
from cc_gpu.attest.rim import HASH_NS, SWID_NS, TCG_NS
from cc_gpu.attest.trust import SIMULATED_MARKER, TrustStore

FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59)
DRIVER_ACTIVE = (7, *range(21, 41))
VBIOS_ACTIVE = (*range(7), *range(8, 13))
BLOCKS = 64
_P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
# The measurement the firmware takes of its security configuration: differs in CC devtools (debug) mode, so such a
# GPU never matches production reference values (as on real GPUs, where that is what `dbgstat` rests on).
DEVTOOLS_INDEX = 1


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIMULATED_MARKER)]
    )


def _der_len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x80 | 2, n >> 8, n & 0xFF])


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def hopper_fwid_extension(key: ec.EllipticCurvePublicKey, fwid: bytes) -> x509.UnrecognizedExtension:
    """TCG DICE extension as Hopper leaves carry it: SEQ{INT 1, SPKI, SEQ{sha384, OCTET STRING fwid}}."""
    spki = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = _der(0x30, bytes.fromhex("0609608648016503040202") + _der(0x04, fwid))
    return x509.UnrecognizedExtension(FWID_OID_HOPPER, _der(0x30, _der(0x02, b"\x01") + spki + digest))


@dataclass
class _Node:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _issue(
    subject: str,
    issuer: _Node | None,
    *,
    ca: bool,
    not_before: datetime,
    not_after: datetime,
    serial: int | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> _Node:
    key = key or _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA384())
    return _Node(cert, key)


@dataclass(frozen=True)
class Faults:
    """Knobs for bad evidence. The default (all off) yields evidence that passes the strict policy."""

    wrong_nonce: bool = False
    bad_signature: bool = False
    tamper_measurement: int | None = None  # RIM index whose runtime value stops matching
    drop_chain_cert: int | None = None  # position in the device chain to leave out
    foreign_root: bool = False  # chain ends in a root the verifier does not trust
    swap_leaf: bool = False  # leaf of another GPU (the report signature then fails)
    expired_device_cert: bool = False
    expired_rim_signer: bool = False
    fwid_mismatch: bool = False
    rim_version_mismatch: bool = False
    index_conflict: bool = False  # an index active in both RIMs
    tamper_rim: bool = False  # a golden value changed after signing
    nvdec0_enabled: bool = False  # NVDEC0 disabled (index 35 not comparable) is what real H100s report
    devtools: bool = False  # CC devtools (debug) mode: the firmware measures its debug configuration
    feature_flag: int | None = None  # emit OPAQUE_DATA_VERSION 1 and this FEATURE_FLAG (0 SPT, 1 MPT, 2 PPCIE)


@dataclass(frozen=True)
class SimEvidence:
    report: bytes
    cert_chain_pem: bytes
    driver_rim: bytes
    vbios_rim: bytes
    driver_rim_id: str
    vbios_rim_id: str
    nonce: bytes

    @property
    def rims(self) -> dict[str, bytes]:
        return {self.driver_rim_id: self.driver_rim, self.vbios_rim_id: self.vbios_rim}


@dataclass
class SimulatedCa:
    """A device CA hierarchy (root -> identity -> provisioner ICA) and a RIM one (root -> CA -> L3 -> L4 signer)."""

    now: datetime
    device_root: _Node
    identity: _Node
    provisioner: _Node
    rim_root: _Node
    rim_ca: _Node
    rim_l3: _Node
    rim_signer: _Node
    revoked: dict[int, x509.ReasonFlags] = field(default_factory=dict)
    issued: dict[int, x509.Certificate] = field(default_factory=dict)
    # GPU keys are derived from this secret and the GPU's identity, so that two processes holding the same CA (the
    # plugin's simulated node, a simulated guest, the verification service) see the same simulated GPUs.
    gpu_secret: bytes = field(default_factory=lambda: os.urandom(32))

    def __post_init__(self) -> None:
        for node in (self.identity, self.provisioner, self.rim_ca, self.rim_l3, self.rim_signer):
            self.issued[node.cert.serial_number] = node.cert

    @classmethod
    def create(cls, now: datetime) -> SimulatedCa:
        naive = now.replace(tzinfo=None)
        start = naive - timedelta(days=365)
        root = _issue("SIM Device Identity CA", None, ca=True, not_before=start, not_after=FAR_FUTURE)
        identity = _issue("SIM GH100 Identity", root, ca=True, not_before=start, not_after=FAR_FUTURE)
        prov = _issue("SIM GH100 Provisioner ICA 1", identity, ca=True, not_before=start, not_after=FAR_FUTURE)
        rim_root = _issue("SIM CoRIM signing Root CA", None, ca=True, not_before=start, not_after=FAR_FUTURE)
        rim_ca = _issue("SIM Reference Value GH100 CA", rim_root, ca=True, not_before=start, not_after=FAR_FUTURE)
        l3 = _issue("SIM Reference Value L3 GH100 001", rim_ca, ca=True, not_before=start, not_after=FAR_FUTURE)
        signer = _issue("SIM RIM L4 Signer", l3, ca=False, not_before=start, not_after=naive + timedelta(days=365))
        return cls(naive, root, identity, prov, rim_root, rim_ca, l3, signer)

    _NODES = ("device_root", "identity", "provisioner", "rim_root", "rim_ca", "rim_l3", "rim_signer")

    def save(self) -> bytes:
        """The CA as JSON (certificates and private keys in PEM): a test CA's keys, for the other processes of one
        simulated node. Never a production secret: every certificate carries `SIMULATED_MARKER`."""
        nodes = {}
        for name in self._NODES:
            node: _Node = getattr(self, name)
            nodes[name] = {"cert": node.cert.public_bytes(Encoding.PEM).decode(),
                           "key": node.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()}
        return json.dumps({"now": self.now.isoformat(), "gpuSecret": self.gpu_secret.hex(), "nodes": nodes}).encode()

    @classmethod
    def load(cls, data: bytes) -> SimulatedCa:
        raw = json.loads(data)
        nodes = {}
        for name in cls._NODES:
            key = load_pem_private_key(raw["nodes"][name]["key"].encode(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            nodes[name] = _Node(x509.load_pem_x509_certificate(raw["nodes"][name]["cert"].encode()), key)
        n = [nodes[name] for name in cls._NODES]
        return cls(datetime.fromisoformat(raw["now"]), n[0], n[1], n[2], n[3], n[4], n[5], n[6],
                   gpu_secret=bytes.fromhex(raw["gpuSecret"]))

    def derived_key(self, label: str) -> ec.EllipticCurvePrivateKey:
        digest = hashlib.sha384(self.gpu_secret + label.encode()).digest()
        return ec.derive_private_key(int.from_bytes(digest, "big") % (_P384_ORDER - 1) + 1, ec.SECP384R1())

    def trust_store(self) -> TrustStore:
        """A store holding this CA's roots; only constructible with `allow_simulated=True`."""
        return TrustStore.of([self.device_root.cert], [self.rim_root.cert], allow_simulated=True)

    def gpu(self, identity: str, **kwargs: Any) -> SimulatedGpu:
        return SimulatedGpu.create(self, identity, **kwargs)

    def revoke(self, cert: x509.Certificate, reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise) -> None:
        self.revoked[cert.serial_number] = reason

    def ocsp_responder(self) -> SimOcspResponder:
        issuers = [self.device_root, self.identity, self.provisioner, self.rim_root, self.rim_ca, self.rim_l3]
        return SimOcspResponder(issuers, self)


@dataclass
class SimulatedGpu:
    ca: SimulatedCa
    identity: str
    brom: _Node
    leaf: _Node
    fwid: bytes
    driver_version: str = "550.90.07"
    vbios_version: str = "96.00.9F.00.01"
    project: str = "1010"
    project_sku: str = "0200"
    chip_sku: str = "882"

    @classmethod
    def create(cls, ca: SimulatedCa, identity: str, **kwargs: Any) -> SimulatedGpu:
        seed = hashlib.sha384(identity.encode()).digest()
        start = ca.now - timedelta(days=30)
        brom = _issue(
            "GH100 A01 GSP BROM",
            ca.provisioner,
            ca=True,
            not_before=start,
            not_after=FAR_FUTURE,
            serial=int.from_bytes(seed[:9], "big") | 1,
            key=ca.derived_key(f"brom/{identity}"),
        )
        fwid = hashlib.sha384(b"fwid" + seed).digest()
        leaf_key = ca.derived_key(f"leaf/{identity}")
        leaf = _issue(
            "GH100 A01 GSP FMC LF",
            brom,
            ca=False,
            not_before=start,
            not_after=FAR_FUTURE,
            key=leaf_key,
            serial=int.from_bytes(seed[9:28], "big") | 1,
            extensions=(hopper_fwid_extension(leaf_key.public_key(), fwid),),
        )
        ca.issued[brom.cert.serial_number] = brom.cert
        ca.issued[leaf.cert.serial_number] = leaf.cert
        return cls(ca, identity, brom, leaf, fwid, **kwargs)

    def golden(self, index: int) -> bytes:
        return hashlib.sha384(f"{self.identity}/{self.driver_version}/{self.vbios_version}/{index}".encode()).digest()

    @property
    def driver_rim_id(self) -> str:
        return f"NV_GPU_DRIVER_GH100_{self.driver_version}"

    @property
    def vbios_rim_id(self) -> str:
        compact = self.vbios_version.replace(".", "").upper()
        return f"NV_GPU_VBIOS_{self.project}_{self.project_sku}_{self.chip_sku}_{compact}"

    def evidence(self, nonce: bytes, faults: Faults = Faults()) -> SimEvidence:
        return SimEvidence(
            report=self._report(nonce, faults),
            cert_chain_pem=self._chain(faults),
            driver_rim=self._rim("driver", faults),
            vbios_rim=self._rim("vbios", faults),
            driver_rim_id=self.driver_rim_id,
            vbios_rim_id=self.vbios_rim_id,
            nonce=nonce,
        )

    # -- report --------------------------------------------------------------------------------------------------

    def _opaque(self, faults: Faults) -> bytes:
        # "96.00.9F.00.01" is carried as bytes [3].[2].[1].[0].[4] of the 8-byte TLV
        v0, v1, v2, v3, v4 = (int(p, 16) for p in self.vbios_version.split("."))
        fwid = hashlib.sha384(b"other").digest() if faults.fwid_mismatch else self.fwid
        tlvs = [
            (3, self.driver_version.encode() + b"\0"),
            (4, bytes.fromhex("8001000000000000")),
            (6, bytes([v3, v2, v1, v0, v4, 0, 0, 0])),
            (11, bytes([NVDEC0_ENABLED if faults.nvdec0_enabled else NVDEC0_DISABLED])),
            (12, b"".join((1).to_bytes(4, "little") for _ in range(BLOCKS))),
            (15, self.chip_sku.encode() + b"\0"),
            (17, self.project.encode() + b"\0"),
            (18, self.project_sku.encode() + b"\0"),
            (20, fwid),
        ]
        if faults.feature_flag is not None:
            tlvs += [(34, (1).to_bytes(4, "little")), (36, faults.feature_flag.to_bytes(4, "little"))]
        return b"".join(t.to_bytes(2, "little") + len(v).to_bytes(2, "little") + v for t, v in tlvs)

    def _report(self, nonce: bytes, faults: Faults) -> bytes:
        request_nonce = bytes(32) if faults.wrong_nonce else nonce
        request = bytes([0x11, 0xE0, 0x01, 0xFF]) + request_nonce + b"\x00"
        record = b""
        for spdm_index in range(1, BLOCKS + 1):
            index = spdm_index - 1
            active = index in DRIVER_ACTIVE or index in VBIOS_ACTIVE
            value = self.golden(index) if active else bytes(48)
            if index == faults.tamper_measurement or (index == 35 and not faults.nvdec0_enabled):
                value = hashlib.sha384(b"tampered" + value).digest()
            elif faults.devtools and index == DEVTOOLS_INDEX:
                value = hashlib.sha384(b"debug configuration" + value).digest()
            record += bytes([spdm_index, 0x01]) + (51).to_bytes(2, "little") + b"\x01" + (48).to_bytes(2, "little")
            record += value
        opaque = self._opaque(faults)
        response = bytes([0x11, 0x60, 0x00, 0x00, BLOCKS]) + len(record).to_bytes(3, "little") + record
        response += hashlib.sha256(nonce + b"responder").digest() + len(opaque).to_bytes(2, "little") + opaque
        body = request + response
        digest_sig = self.leaf.key.sign(body, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(digest_sig)
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        if faults.bad_signature:
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        return body + signature

    # -- chain ---------------------------------------------------------------------------------------------------

    def _chain(self, faults: Faults) -> bytes:
        ca = self.ca
        leaf = self.leaf.cert
        if faults.swap_leaf:
            leaf = _issue(
                "GH100 A01 GSP FMC LF", self.brom, ca=False, not_before=ca.now - timedelta(days=1), not_after=FAR_FUTURE
            ).cert
        if faults.expired_device_cert:
            leaf = _issue(
                "GH100 A01 GSP FMC LF",
                self.brom,
                ca=False,
                not_before=ca.now - timedelta(days=60),
                not_after=ca.now - timedelta(days=1),
                key=self.leaf.key,
                extensions=(hopper_fwid_extension(self.leaf.key.public_key(), self.fwid),),
            ).cert
        chain = [leaf, self.brom.cert, ca.provisioner.cert, ca.identity.cert, ca.device_root.cert]
        if faults.foreign_root:
            other = SimulatedCa.create(ca.now)
            chain[-1] = other.device_root.cert
            chain[-2] = other.identity.cert
            chain[-3] = other.provisioner.cert
            chain[1] = _issue(
                "GH100 A01 GSP BROM",
                other.provisioner,
                ca=True,
                not_before=ca.now - timedelta(days=1),
                not_after=FAR_FUTURE,
                key=self.brom.key,
            ).cert
        if faults.drop_chain_cert is not None:
            del chain[faults.drop_chain_cert]
        return b"".join(c.public_bytes(Encoding.PEM) for c in chain)

    # -- RIMs ----------------------------------------------------------------------------------------------------

    def _rim(self, kind: str, faults: Faults) -> bytes:
        version = self.driver_version if kind == "driver" else self.vbios_version
        if faults.rim_version_mismatch and kind == "vbios":
            version = "96.00.00.00.01"
        active = set(DRIVER_ACTIVE if kind == "driver" else VBIOS_ACTIVE)
        if faults.index_conflict and kind == "vbios":
            active.add(DRIVER_ACTIVE[0])
        root = etree.Element(f"{{{SWID_NS}}}SoftwareIdentity", nsmap={None: SWID_NS, "ns2": HASH_NS})
        root.set("name", "GH100")
        root.set("tagId", hashlib.sha384(f"{kind}/{version}".encode()).hexdigest())
        root.set("version", "1.0")
        meta = etree.SubElement(root, f"{{{SWID_NS}}}Meta", nsmap={"ns1": TCG_NS})
        meta.set("colloquialVersion", version)
        meta.set("product", "GH100")
        meta.set(f"{{{TCG_NS}}}FirmwareManufacturerId", "5703")
        payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
        for index in range(BLOCKS):
            res = etree.SubElement(payload, f"{{{SWID_NS}}}Resource")
            res.set("type", "Measurement")
            res.set("index", str(index))
            res.set("active", "True" if index in active else "False")
            res.set("alternatives", "1")
            res.set(f"{{{HASH_NS}}}Hash0", (self.golden(index) if index in active else bytes(48)).hex())
            res.set("name", f"Measurement_{index}")
            res.set("size", "48")
        signer = self.ca.rim_signer
        if faults.expired_rim_signer:
            signer = _issue(
                "SIM RIM L4 Signer",
                self.ca.rim_l3,
                ca=False,
                not_before=self.ca.now - timedelta(days=400),
                not_after=self.ca.now - timedelta(days=1),
            )
        chain = [signer.cert, self.ca.rim_l3.cert, self.ca.rim_ca.cert, self.ca.rim_root.cert]
        signed = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA384,
            digest_algorithm=DigestAlgorithm.SHA384,
            c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
        ).sign(root, key=signer.key, cert=chain)
        out: bytes = etree.tostring(signed)
        if faults.tamper_rim and kind == "vbios":
            out = out.replace(self.golden(VBIOS_ACTIVE[0]).hex().encode(), bytes(48).hex().encode())
        return out


class SimOcspResponder:
    """An OCSP responder double (an `OcspTransport`): decodes DER requests, answers signed DER responses."""

    def __init__(self, issuers: list[_Node], ca: SimulatedCa, validity: timedelta = timedelta(days=7)) -> None:
        self.issuers = issuers
        self.ca = ca
        self.validity = validity
        self.requests = 0

    def post(self, url: str, body: bytes, timeout: float) -> bytes:
        self.requests += 1
        req = ocsp.load_der_ocsp_request(body)
        issuer = next(n for n in self.issuers if hashlib.sha384(_key_bits(n.cert)).digest() == req.issuer_key_hash)
        subject = _find_cert(self.ca, req.serial_number)
        reason = self.ca.revoked.get(req.serial_number)
        this_update = self.ca.now - timedelta(hours=1)
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=subject,
            issuer=issuer.cert,
            algorithm=hashes.SHA384(),
            cert_status=ocsp.OCSPCertStatus.REVOKED if reason else ocsp.OCSPCertStatus.GOOD,
            this_update=this_update,
            next_update=this_update + self.validity,
            revocation_time=this_update if reason else None,
            revocation_reason=reason,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        try:
            nonce = req.extensions.get_extension_for_class(x509.OCSPNonce).value
            builder = builder.add_extension(nonce, critical=False)
        except x509.ExtensionNotFound:
            pass
        return builder.sign(issuer.key, hashes.SHA384()).public_bytes(Encoding.DER)


def _key_bits(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _find_cert(ca: SimulatedCa, serial: int) -> x509.Certificate:
    cert = ca.issued.get(serial)
    if cert is None:
        raise KeyError(f"simulated OCSP responder does not know serial {serial:x}")
    return cert
