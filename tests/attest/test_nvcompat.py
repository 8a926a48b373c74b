"""The NVIDIA-compatible API's handlers without a network: malformed requests, refusals, the JWKS, the logs."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cc_gpu.attest.errors import TokenError
from cc_gpu.attest.evidence import decode_report_text
from cc_gpu.attest.guest import GuestEvidence, Handler, Request, SubmissionResult
from cc_gpu.attest.nvcompat import GPU_PATHS, JWKS_PATH, NvidiaTokens, register_nvidia_routes, signer_certificate
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.token import TokenSigner
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verifier import Verifier
from cc_gpu.errors import TemporaryError
from tests.attest.conftest import AT_2025, Sample
from tests.attest.nvsdk_front import InteropCore

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Routes:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, object]:
        response = self.routes[(method, path)](Request(path, {}, body, "10.0.0.7", method))
        assert response.headers["Content-Type"] == "application/json"
        return response.status, json.loads(response.body)


class Unavailable:
    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        raise TemporaryError("API server unreachable", retry_after=2.0)


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(ec.generate_private_key(ec.SECP384R1()), kid="k1")


@pytest.fixture
def api(signer: TokenSigner, nvidia_211: Sample) -> tuple[Routes, InteropCore]:
    core = InteropCore(Verifier(TrustStore.default()), Policy(revocation=RevocationMode.OFF), at=AT_2025,
                       rims=[nvidia_211.rim("Driver_RIM_test_no_gpu.swidtag"),
                             nvidia_211.rim("1010_0200_882_96005E0001_test_no_gpu.swidtag")])
    routes = Routes()
    register_nvidia_routes(routes, core, NvidiaTokens(signer, clock=lambda: NOW))
    return routes, core


def body(sample: Sample, **override: object) -> bytes:
    request = {
        "nonce": sample.nonce.hex(),
        "evidence_list": [{"evidence": base64.b64encode(decode_report_text(sample.report)).decode(),
                           "certificate": base64.b64encode(sample.chain).decode()}],
        "arch": "HOPPER",
        "claims_version": "3.0",
        **override,
    }
    return json.dumps(request).encode()


def test_routes_are_nvidias_paths(api: tuple[Routes, InteropCore]) -> None:
    routes, _ = api
    assert set(routes.routes) == {("POST", p) for p in GPU_PATHS} | {("GET", JWKS_PATH)}


def test_jwks_publishes_the_key_with_an_x5c_certificate(api: tuple[Routes, InteropCore], signer: TokenSigner) -> None:
    status, doc = api[0].call("GET", JWKS_PATH)
    assert status == 200
    (key,) = doc["keys"]  # type: ignore[index]
    assert (key["kid"], key["kty"], key["crv"], key["alg"]) == ("k1", "EC", "P-384", "ES384")
    cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
    assert cert.public_key() == signer.key.public_key()


def test_a_certificate_for_another_key_is_refused(signer: TokenSigner) -> None:
    other = TokenSigner(ec.generate_private_key(ec.SECP384R1()), kid="k2")
    with pytest.raises(TokenError):
        NvidiaTokens(signer, signer_certificate(other, now=NOW))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"nonce": "zz" * 32}, "nonce is not hexadecimal"),
        ({"nonce": "00" * 16}, "nonce must be 64"),
        ({"arch": "AMPERE"}, "arch must be one of"),
        ({"claims_version": "2.0"}, "is not served"),
        ({"evidence_list": []}, "evidence_list must be a non-empty list"),
        ({"evidence_list": [{"evidence": "!!", "certificate": "AA=="}]}, "evidence is not valid base64"),
        ({"evidence_list": [{"evidence": "AA==", "certificate": "AA=="}]}, "not a base64-encoded PEM chain"),
        ({"evidence_list": ["x"]}, "must be an object"),
        ({"evidence_list": [{}] * 17}, "at most 16"),
    ],
)
def test_malformed_requests_get_a_400_naming_the_field(api: tuple[Routes, InteropCore], nvidia_211: Sample,
                                                       override: dict[str, object], message: str) -> None:
    status, doc = api[0].call("POST", GPU_PATHS[0], body(nvidia_211, **override))
    assert status == 400
    assert message in doc["message"]  # type: ignore[index]


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1]", b"\xff\xfe", b"{" * 10, b"x" * (2 << 20)])
def test_garbage_gets_a_400(api: tuple[Routes, InteropCore], raw: bytes) -> None:
    assert api[0].call("POST", GPU_PATHS[0], raw)[0] == 400


def test_an_unregistered_or_used_challenge_is_refused(api: tuple[Routes, InteropCore], nvidia_211: Sample) -> None:
    routes, core = api
    status, doc = routes.call("POST", GPU_PATHS[1], body(nvidia_211))
    assert (status, doc["failed_checks"]) == (403, ["x-cc-gpu-challenge-unknown"])  # type: ignore[index]
    core.register(nvidia_211.nonce)
    assert routes.call("POST", GPU_PATHS[1], body(nvidia_211))[0] == 200
    assert routes.call("POST", GPU_PATHS[1], body(nvidia_211))[0] == 403


def test_an_unavailable_core_is_a_503_with_retry_after(signer: TokenSigner, nvidia_211: Sample) -> None:
    routes = Routes()
    register_nvidia_routes(routes, Unavailable(), NvidiaTokens(signer))
    response = routes.routes[("POST", GPU_PATHS[0])](Request(GPU_PATHS[0], {}, body(nvidia_211), "c"))
    assert (response.status, response.headers["Retry-After"]) == (503, "2")


def test_tokens_are_es384_issued_now_and_never_logged(api: tuple[Routes, InteropCore], nvidia_211: Sample,
                                                      signer: TokenSigner, caplog: pytest.LogCaptureFixture) -> None:
    routes, core = api
    core.register(nvidia_211.nonce)
    with caplog.at_level(logging.DEBUG):
        status, eat = routes.call("POST", GPU_PATHS[0], body(nvidia_211))
    assert status == 200
    (kind, overall), detached = eat  # type: ignore[misc]
    assert kind == "JWT"
    header = jwt.get_unverified_header(overall)
    assert (header["alg"], header["kid"]) == ("ES384", "k1")
    claims = jwt.decode(overall, signer.key.public_key(), algorithms=["ES384"], options={"verify_exp": False})
    assert claims["iat"] == int(NOW.timestamp()) and claims["x-nvidia-overall-att-result"] is True
    gpu = jwt.decode(detached["GPU-0"], signer.key.public_key(), algorithms=["ES384"], options={"verify_exp": False})
    assert gpu["x-nvidia-gpu-attestation-report-cert-chain"]["x-nvidia-cert-ocsp-status"] == "off"
    assert gpu["x-nvidia-gpu-arch-check"] is True and gpu["measres"] == "success"
    assert caplog.records, "the outcome is logged"
    for token in (overall, detached["GPU-0"]):
        assert token not in caplog.text and token.split(".")[2] not in caplog.text


class Refusing:
    def __init__(self, check: str) -> None:
        self.check = check

    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        return SubmissionResult(False, (), None, (self.check,), None)


@pytest.mark.parametrize(("check", "status"), [
    ("x-cc-gpu-challenge-reused", 403), ("x-cc-gpu-challenge-expired", 403), ("x-cc-gpu-rate-limited", 429),
    ("x-cc-gpu-service-unavailable", 503), ("x-cc-gpu-evidence-malformed (bad chain)", 400),
])
def test_a_refusal_before_verification_has_its_status(signer: TokenSigner, nvidia_211: Sample, check: str,
                                                      status: int) -> None:
    routes = Routes()
    register_nvidia_routes(routes, Refusing(check), NvidiaTokens(signer))
    got, doc = routes.call("POST", GPU_PATHS[0], body(nvidia_211))
    assert (got, doc["errorCode"], doc["failed_checks"]) == (status, status, [check])  # type: ignore[index]
