"""Revocation: online, cached (air-gapped) and off, against an OCSP responder double speaking DER."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cc_gpu.attest import policy as P
from cc_gpu.attest.errors import OcspError
from cc_gpu.attest.ocsp import (
    DirectoryOcspStore,
    MemoryOcspStore,
    RevocationChecker,
    RevocationMode,
    cert_id_key,
    evaluate_response,
)
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.sim import SimulatedCa
from cc_gpu.attest.verifier import Verifier
from tests.attest.conftest import SIM_NOW

NONCE = bytes(32)


@pytest.fixture
def ca() -> SimulatedCa:
    return SimulatedCa.create(SIM_NOW)  # fresh per test: revocations are per CA


def _verify(ca: SimulatedCa, checker: RevocationChecker, policy: Policy, gpu: str = "GPU-0", at=SIM_NOW):  # type: ignore[no-untyped-def]
    ev = ca.gpu(gpu).evidence(NONCE)
    return Verifier(ca.trust_store(), revocation=checker).verify(
        ev.report, ev.cert_chain_pem, NONCE, policy, at=at, rims=[ev.driver_rim, ev.vbios_rim]
    )


def test_online_mode_checks_every_non_root_issued_cert_once_then_caches(ca: SimulatedCa) -> None:
    responder = ca.ocsp_responder()
    checker = RevocationChecker(transport=responder)
    assert _verify(ca, checker, Policy()).ok
    # device certs 1..3 and the RIM chain's certs 0..2 (both RIMs share one signing chain, answered from the cache)
    assert responder.requests == 3 + 3
    assert _verify(ca, checker, Policy(), gpu="GPU-1").ok
    assert responder.requests == 6 + 1  # the new GPU's BROM only; the rest came from the cache


@pytest.mark.parametrize(
    ("case", "reason", "allow_hold", "ok"),
    [
        ("revoked", x509.ReasonFlags.key_compromise, False, False),
        ("hold-refused", x509.ReasonFlags.certificate_hold, False, False),
        ("hold-tolerated", x509.ReasonFlags.certificate_hold, True, True),
    ],
)
def test_revoked_and_held_device_certs(
    case: str, reason: x509.ReasonFlags, allow_hold: bool, ok: bool, ca: SimulatedCa
) -> None:
    gpu = ca.gpu("GPU-r")
    ca.revoke(gpu.brom.cert, reason)
    verdict = _verify(
        ca, RevocationChecker(transport=ca.ocsp_responder()), Policy(allow_certificate_hold=allow_hold), gpu="GPU-r"
    )
    assert verdict.ok is ok
    if not ok:
        assert verdict.check(P.CHECK_CHAIN).status == "fail"
        assert "GH100 A01 GSP BROM" in verdict.check(P.CHECK_CHAIN).detail


def test_hold_on_one_chain_does_not_excuse_another(ca: SimulatedCa) -> None:
    ca.revoke(ca.rim_l3.cert, x509.ReasonFlags.key_compromise)
    ca.revoke(ca.gpu("GPU-h").brom.cert, x509.ReasonFlags.certificate_hold)
    verdict = _verify(
        ca, RevocationChecker(transport=ca.ocsp_responder()), Policy(allow_certificate_hold=True), gpu="GPU-h"
    )
    assert verdict.check(P.CHECK_CHAIN).status == "pass"
    assert verdict.check(P.rim_check("driver", "cert-chain")).status == "fail"


def test_revoked_rim_signer(ca: SimulatedCa) -> None:
    ca.revoke(ca.rim_signer.cert)
    verdict = _verify(ca, RevocationChecker(transport=ca.ocsp_responder()), Policy())
    assert {c.name for c in verdict.failed} >= {P.rim_check("driver", "cert-chain"), P.rim_check("vbios", "cert-chain")}


def test_cached_mode_without_responses_fails_closed(ca: SimulatedCa) -> None:
    verdict = _verify(ca, RevocationChecker(), Policy(revocation=RevocationMode.CACHED))
    assert not verdict.ok
    assert "no cached OCSP response" in verdict.check(P.CHECK_CHAIN).detail


def test_cached_mode_uses_responses_fetched_elsewhere(ca: SimulatedCa, tmp_path: Path) -> None:
    online = RevocationChecker(store=DirectoryOcspStore(tmp_path), transport=ca.ocsp_responder())
    assert _verify(ca, online, Policy()).ok
    air_gapped = RevocationChecker(store=DirectoryOcspStore(tmp_path))  # no transport at all
    assert _verify(ca, air_gapped, Policy(revocation=RevocationMode.CACHED)).ok
    # once the cached responses' nextUpdate has passed, cached mode refuses them
    late = _verify(ca, air_gapped, Policy(revocation=RevocationMode.CACHED), at=SIM_NOW + timedelta(days=8))
    assert "not current" in late.check(P.CHECK_CHAIN).detail


def test_online_mode_without_transport_fails_closed(ca: SimulatedCa) -> None:
    verdict = _verify(ca, RevocationChecker(), Policy())
    assert verdict.check(P.CHECK_CHAIN).status == "fail"


def test_off_mode_is_reported(ca: SimulatedCa) -> None:
    verdict = _verify(ca, RevocationChecker(), Policy(revocation=RevocationMode.OFF))
    assert verdict.ok
    assert verdict.revocation_mode == "off"
    assert verdict.claims()["x-cc-gpu-ocsp"] == {"device": "off", "driver-rim": "off", "vbios-rim": "off"}


def _response(
    ca: SimulatedCa,
    cert: x509.Certificate,
    issuer_node,
    *,
    this_update=None,
    next_update=None,  # type: ignore[no-untyped-def]
    nonce: bytes | None = None,
    signer=None,
) -> bytes:
    this_update = this_update or SIM_NOW.replace(tzinfo=None) - timedelta(hours=1)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=cert,
            issuer=issuer_node.cert,
            algorithm=hashes.SHA384(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=this_update,
            next_update=next_update,
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, (signer or issuer_node).cert)
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.sign((signer or issuer_node).key, hashes.SHA384()).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    "case", ["no-next-update", "future-this-update", "wrong-signer", "nonce-mismatch", "wrong-serial", "garbage"]
)
def test_invalid_responses_are_refused(case: str, ca: SimulatedCa) -> None:
    cert, issuer = ca.identity.cert, ca.device_root
    naive = SIM_NOW.replace(tzinfo=None)
    kwargs: dict[str, object] = {"next_update": naive + timedelta(days=1)}
    nonce = None
    if case == "no-next-update":
        kwargs["next_update"] = None
    elif case == "future-this-update":
        kwargs["this_update"] = naive + timedelta(hours=1)
    elif case == "wrong-signer":
        kwargs["signer"] = ca.rim_root
    elif case == "nonce-mismatch":
        kwargs["nonce"] = b"x" * 32
        nonce = b"y" * 32
    der = (
        b"\x30\x03\x0a\x01\x00"
        if case == "garbage"
        else _response(
            ca,
            ca.provisioner.cert if case == "wrong-serial" else cert,
            ca.identity if case == "wrong-serial" else issuer,
            **kwargs,
        )
    )
    with pytest.raises(OcspError):
        evaluate_response(der, cert, issuer.cert, SIM_NOW, nonce, "test")


def test_store_keys_and_memory_store(ca: SimulatedCa) -> None:
    store = MemoryOcspStore()
    key = cert_id_key(ca.identity.cert, ca.device_root.cert)
    assert store.get(key) is None
    store.put(key, b"x")
    assert store.get(key) == b"x"
    assert key.endswith(f"-{ca.identity.cert.serial_number:x}")


def _delegate(ca: SimulatedCa, *, ocsp_eku: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    naive = SIM_NOW.replace(tzinfo=None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "OCSP responder")]))
        .issuer_name(ca.device_root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(naive - timedelta(days=1))
        .not_valid_after(naive + timedelta(days=30))
    )
    usages = [ExtendedKeyUsageOID.OCSP_SIGNING] if ocsp_eku else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca.device_root.key, hashes.SHA384()), key


@pytest.mark.parametrize("encoding", [ocsp.OCSPResponderEncoding.HASH, ocsp.OCSPResponderEncoding.NAME])
@pytest.mark.parametrize(("ocsp_eku", "accepted"), [(True, True), (False, False)], ids=["ocsp-eku", "no-ocsp-eku"])
def test_delegated_responder(
    encoding: ocsp.OCSPResponderEncoding, ocsp_eku: bool, accepted: bool, ca: SimulatedCa
) -> None:
    responder, key = _delegate(ca, ocsp_eku=ocsp_eku)
    naive = SIM_NOW.replace(tzinfo=None)
    der = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=ca.identity.cert,
            issuer=ca.device_root.cert,
            algorithm=hashes.SHA384(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=naive - timedelta(hours=1),
            next_update=naive + timedelta(days=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(encoding, responder)
        .certificates([responder])
        .sign(key, hashes.SHA384())
        .public_bytes(Encoding.DER)
    )
    if accepted:
        assert evaluate_response(der, ca.identity.cert, ca.device_root.cert, SIM_NOW, None, "t").status == "good"
    else:
        with pytest.raises(OcspError, match="OCSP-signing"):
            evaluate_response(der, ca.identity.cert, ca.device_root.cert, SIM_NOW, None, "t")


def test_online_asks_the_responder_again_beyond_its_bound_and_sees_a_revocation(ca: SimulatedCa) -> None:
    """A good answer cached for days (the response's own validity) must not hide a revocation from `online` mode."""
    responder = ca.ocsp_responder()
    store = MemoryOcspStore()
    checker = RevocationChecker(store=store, transport=responder, online_cache=timedelta(minutes=5))
    assert _verify(ca, checker, Policy(), gpu="GPU-x").ok
    asked = responder.requests
    assert _verify(ca, checker, Policy(), gpu="GPU-x", at=SIM_NOW + timedelta(minutes=4)).ok
    assert responder.requests == asked, "within the admin's bound the recent answer stands"
    ca.revoke(ca.gpu("GPU-x").brom.cert, x509.ReasonFlags.key_compromise)
    later = SIM_NOW + timedelta(minutes=10)
    verdict = _verify(ca, checker, Policy(), gpu="GPU-x", at=later)
    assert not verdict.ok and "GH100 A01 GSP BROM" in verdict.check(P.CHECK_CHAIN).detail
    assert responder.requests > asked


def test_online_never_answers_from_an_imported_store(ca: SimulatedCa) -> None:
    responder = ca.ocsp_responder()
    warm = RevocationChecker(transport=responder)
    assert _verify(ca, warm, Policy(), gpu="GPU-y").ok
    imported = warm.store
    fresh = RevocationChecker(store=imported, transport=None)
    verdict = _verify(ca, fresh, Policy(), gpu="GPU-y")
    assert not verdict.ok, "online mode needs the responder; a store alone is `cached` mode"
    assert _verify(ca, fresh, Policy(revocation=RevocationMode.CACHED), gpu="GPU-y").ok
