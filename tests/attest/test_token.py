"""Verdict tokens: ES384 with a key id, verified offline; forged, expired, foreign or HS256 tokens are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from cc_gpu.attest.errors import TokenError
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.sim import SimulatedCa
from cc_gpu.attest.token import TokenSigner, TokenVerifier, load_public_key, load_signing_key
from cc_gpu.attest.verdict import Check, Verdict
from cc_gpu.attest.verifier import Verifier
from tests.attest.conftest import SIM_NOW

NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def verdict(sim_ca: SimulatedCa) -> Verdict:
    ev = sim_ca.gpu("GPU-tok").evidence(NONCE)

    result = Verifier(sim_ca.trust_store()).verify(
        ev.report,
        ev.cert_chain_pem,
        NONCE,
        Policy(revocation=RevocationMode.OFF),
        at=SIM_NOW,
        rims=[ev.driver_rim, ev.vbios_rim],
    )
    assert result.ok
    return result


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_round_trip_with_extra_claims(verdict: Verdict, key: ec.EllipticCurvePrivateKey) -> None:
    extra = {"claim_uid": "c-1", "pod_uids": ["p-1", "p-2"], "node": "node-a"}
    token = TokenSigner(key, "kid-1").sign(verdict, extra, expires_at=SIM_NOW + timedelta(minutes=2))
    assert jwt.get_unverified_header(token) == {"alg": "ES384", "kid": "kid-1", "typ": "JWT"}
    claims = TokenVerifier({"kid-1": key.public_key()}).verify(token, SIM_NOW + timedelta(minutes=1), nonce=NONCE.hex())
    assert claims["eat_nonce"] == NONCE.hex()
    assert claims["ueid"] == verdict.identity.ueid and claims["hwmodel"] == "GH100 A01 GSP BROM"
    assert claims["x-nvidia-overall-att-result"] is True and claims["measres"] == "success"
    assert claims["iat"] == int(SIM_NOW.timestamp()) and claims["exp"] == int(SIM_NOW.timestamp()) + 120
    assert {k: claims[k] for k in extra} == extra


def _forge_hs256(verdict: Verdict) -> str:
    """What NVIDIA's verifier emits: HS256 with the literal key "secret" (built by hand; PyJWT rightly warns)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {**verdict.claims(), "iss": "cc-gpu-attestation", "exp": 2**40, "nbf": 0, "iat": 0}
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'kid-1'}).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(b"secret", signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("expired", "expired"),
        ("not-yet-valid", "not valid yet"),
        ("unknown-kid", "not a configured key"),
        ("other-key-same-kid", "does not verify"),
        ("hs256-secret", "algorithm"),
        ("nonce-mismatch", "nonce"),
        ("tampered-payload", "does not verify"),
        ("not-a-token", "not a JWS"),
        ("wrong-issuer", "does not verify"),
    ],
)
def test_bad_tokens_are_refused(case: str, match: str, verdict: Verdict, key: ec.EllipticCurvePrivateKey) -> None:
    signer = TokenSigner(key, "kid-1")
    token = signer.sign(verdict)
    at = SIM_NOW + timedelta(seconds=10)
    keys = {"kid-1": key.public_key()}
    nonce = None
    if case == "expired":
        at = SIM_NOW + timedelta(hours=1)
    elif case == "not-yet-valid":
        at = SIM_NOW - timedelta(seconds=10)
    elif case == "unknown-kid":
        keys = {"kid-2": key.public_key()}
    elif case == "other-key-same-kid":
        keys = {"kid-1": ec.generate_private_key(ec.SECP384R1()).public_key()}
    elif case == "hs256-secret":
        token = _forge_hs256(verdict)
    elif case == "nonce-mismatch":
        nonce = "00" * 32
    elif case == "tampered-payload":
        head, payload, sig = token.split(".")
        token = f"{head}.{payload[:-4]}AAAA.{sig}"
    elif case == "not-a-token":
        token = "hello"
    elif case == "wrong-issuer":
        token = TokenSigner(key, "kid-1", issuer="someone-else").sign(verdict)
    with pytest.raises(TokenError, match=match):
        TokenVerifier(keys).verify(token, at, nonce=nonce)


def test_failing_verdict_token_is_refused_unless_asked(verdict: Verdict, key: ec.EllipticCurvePrivateKey) -> None:
    failing = replace(verdict, checks=(*verdict.checks[:-1], Check("measres", "fail")))
    token = TokenSigner(key, "k").sign(failing)
    with pytest.raises(TokenError, match="failing verdict"):
        TokenVerifier({"k": key.public_key()}).verify(token, SIM_NOW)
    assert TokenVerifier({"k": key.public_key()}).verify(token, SIM_NOW, require_ok=False)["measres"] == "fail"


@pytest.mark.parametrize("case", ["reserved-claim", "no-kid", "wrong-curve", "expiry-before-issue"])
def test_signer_refuses_misuse(case: str, verdict: Verdict, key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(TokenError):
        if case == "reserved-claim":
            TokenSigner(key, "k").sign(verdict, {"eat_nonce": "00"})
        elif case == "no-kid":
            TokenSigner(key, "")
        elif case == "wrong-curve":
            TokenSigner(ec.generate_private_key(ec.SECP256R1()), "k")
        else:
            TokenSigner(key, "k").sign(verdict, expires_at=SIM_NOW - timedelta(seconds=1))


def test_key_files(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    (tmp_path / "k.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "k.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert load_signing_key(tmp_path / "k.pem").public_key() == key.public_key()
    assert load_public_key(tmp_path / "k.pub") == key.public_key()
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(TokenError):
        load_signing_key(tmp_path / "bad.pem")
    with pytest.raises(TokenError):
        load_public_key(tmp_path / "missing.pub")
