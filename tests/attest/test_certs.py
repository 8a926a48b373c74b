"""Certificate rules: path validation details and the FWID extension in both encodings."""

from __future__ import annotations

from datetime import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cc_gpu.attest.certs import FWID_OID_BLACKWELL, ChainError, leaf_fwid, load_pem_chain, validate_chain
from cc_gpu.attest.errors import CertificateParseError
from cc_gpu.attest.sim import hopper_fwid_extension
from tests.attest.conftest import SIM_NOW, Sample

START, END = datetime(2020, 1, 1), datetime(2040, 1, 1)


def _der(tag: int, body: bytes) -> bytes:
    assert len(body) < 0x80
    return bytes([tag, len(body)]) + body


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = True,
    digest: hashes.HashAlgorithm | None = None,
    extension: x509.ExtensionType | None = None,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START)
        .not_valid_after(END)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(issuer_key, digest or hashes.SHA384())


P384 = ec.SECP384R1()


@pytest.fixture(scope="module")
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: ec.generate_private_key(P384) for name in ("root", "mid", "leaf")}


def test_real_hopper_fwid_matches_report(nvidia_273: Sample) -> None:
    leaf = load_pem_chain(nvidia_273.chain)[0]
    assert leaf_fwid(leaf) is not None
    assert leaf_fwid(leaf).hex().startswith("f5c384ae")  # type: ignore[union-attr]


def test_blackwell_tcbinfo_fwid(keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    digest = bytes(range(48))
    fwid = _der(0x30, bytes.fromhex("0609608648016503040202") + _der(0x04, digest))
    tcb_info = _der(0x30, _der(0x80, b"NVIDIA") + _der(0xA6, fwid))
    ext = x509.UnrecognizedExtension(FWID_OID_BLACKWELL, tcb_info)
    assert leaf_fwid(_cert("leaf", keys["leaf"], ("mid", keys["mid"]), ca=False, extension=ext)) == digest


def test_hopper_fwid_round_trip(keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    digest = bytes(reversed(range(48)))
    ext = hopper_fwid_extension(keys["leaf"].public_key(), digest)
    assert leaf_fwid(_cert("leaf", keys["leaf"], ("mid", keys["mid"]), ca=False, extension=ext)) == digest


def test_malformed_fwid_extension_is_a_chain_error(keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    ext = x509.UnrecognizedExtension(FWID_OID_BLACKWELL, b"\x30\x05\x01")
    with pytest.raises(ChainError, match="malformed"):
        leaf_fwid(_cert("leaf", keys["leaf"], ("mid", keys["mid"]), ca=False, extension=ext))


def test_leaf_without_fwid(keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    assert leaf_fwid(_cert("leaf", keys["leaf"], ("mid", keys["mid"]), ca=False)) is None


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("valid", None),
        ("intermediate-not-ca", "not a CA"),
        ("sha256-signature", "not signed with SHA-384"),
        ("p256-key", "P-384"),
        ("wrong-length", "expected 4"),
        ("before-validity", "not valid at"),
        ("untrusted-top", "not issued by a trusted root"),
    ],
)
def test_path_rules(case: str, match: str | None, keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    root = _cert("root", keys["root"])
    mid_key = ec.generate_private_key(ec.SECP256R1()) if case == "p256-key" else keys["mid"]
    mid = _cert(
        "mid",
        mid_key,
        ("root", keys["root"]),
        ca=case != "intermediate-not-ca",
        digest=hashes.SHA256() if case == "sha256-signature" else None,
    )
    leaf = _cert("leaf", keys["leaf"], ("mid", mid_key), ca=False)
    anchors = [_cert("root", ec.generate_private_key(P384))] if case == "untrusted-top" else [root]
    at = SIM_NOW.replace(year=2019) if case == "before-validity" else SIM_NOW
    length = 4 if case == "wrong-length" else 3
    if match is None:
        chain = validate_chain([leaf, mid, root], anchors, at, length)
        assert chain.path == (leaf, mid, root) and chain.valid_at(at)
    else:
        with pytest.raises(ChainError, match=match):
            validate_chain([leaf, mid], anchors, at, length)


def test_unparseable_chain_is_typed() -> None:
    with pytest.raises(CertificateParseError):
        load_pem_chain(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
