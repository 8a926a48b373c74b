"""NVIDIA's attestation SDK (nv-attestation-sdk 2.7.3, from PyPI, in its own virtualenv) in remote mode against
cc-gpu's NVIDIA-compatible API, on NVIDIA's 2.1.1 sample evidence verified as of 2025-01-15.

The client is NVIDIA's code, unchanged: `add_verifier(GPU, REMOTE, url)`, `attest(evidence)`, `validate_token(policy)`.
It posts the evidence, reads the detached EAT, fetches the JWKS from `scheme://host/.well-known/jwks.json`, checks
the ES384 signatures with the `x5c` key and applies the appraisal policy. The policy is NVIDIA's remote GPU policy
example (version 4.0) with two differences this evidence calls for: the sample's report has no FWID (the FWID
claim is false, not asserted), and revocation is off for the replayed sample, so the certificate-chain claims must
say `off`, never `good`.

Each case runs twice: against a small stand-in (tests/attest/nvsdk_front.py) and against the verification service's
own HTTPS server and core (`ServiceServer`, `GuestVerificationService`, as `cc-gpu attest serve` wires them) with the
sample's nonce registered as an interop challenge and the clock pinned to the sample's day. The real service process
with a claim's challenge is tests/dra/test_guest_nvidia_sdk.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cc_gpu.attest import policy as P
from cc_gpu.attest.evidence import decode_report_text, parse_report
from cc_gpu.attest.guest import GuestEvidence, SubmissionResult, SubmissionVerifier
from cc_gpu.attest.nvcompat import NvidiaTokens, register_nvidia_routes
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.sources import DirectoryRimSource, driver_rim_id, vbios_rim_id
from cc_gpu.attest.token import TokenSigner, TokenVerifier
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verifier import Verifier
from cc_gpu.dra.attestcfg import AttestationSettings
from cc_gpu.dra.guestservice import GuestVerificationService, RateLimiter
from cc_gpu.dra.serviceserver import ServiceServer
from tests.attest.conftest import AT_2025, Sample
from tests.attest.nvsdk_front import (
    NVIDIA_POLICY,
    InteropCore,
    RouteServer,
    run_sdk,
    sdk_evidence,
    service_eat,
)
from tests.cluster import pki
from tests.nvidia_vectors import nvidia_sdk_python

SDK_VERSION = "2.7.3"
RIMS = ("Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag")
_CHAIN_OFF = {"x-nvidia-cert-status": "valid", "x-nvidia-cert-ocsp-status": "off"}
# NVIDIA's v4 policy with the two changes the 2.1.1 sample forces: it has no FWID, and revocation is off offline.
_DETACHED = {k: v for k, v in NVIDIA_POLICY["authorization-rules"]["detached-claims"].items()
             if k != "x-nvidia-gpu-attestation-report-cert-chain-fwid-match"}
POLICY = {**NVIDIA_POLICY, "authorization-rules": {**NVIDIA_POLICY["authorization-rules"], "detached-claims": {
    **_DETACHED, **{k: _CHAIN_OFF for k, v in _DETACHED.items() if isinstance(v, dict)}}}}


@dataclass
class Front:
    """A served NVIDIA-compatible API: its base URL, the CA of its certificate, how an admin registers an interop
    challenge, and a verifier of its tokens."""

    url: str
    ca: Path
    core: Any  # `register(nonce)` and the core contract (`verify_submission`)
    verifier: TokenVerifier


class ServiceCore:
    """The verification service's own core (`GuestVerificationService`, what `cc-gpu attest serve` runs) with no API
    server: only admin-registered challenges, which it takes at construction (`--register-challenge`); registering
    starts a fresh one holding that challenge, as restarting the service with the flag would."""

    def __init__(self, make: Callable[[Sequence[bytes]], SubmissionVerifier]) -> None:
        self.make = make
        self.current = make(())

    def register(self, nonce: bytes) -> None:
        self.current = self.make([nonce])

    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        return self.current.verify_submission(nonce, evidence, client=client)


def _service_core(sample: Sample, signer: TokenSigner, rim_dir: Path) -> ServiceCore:
    """The service's core as `attest serve` builds it from settings: RIMs from the admin's imported directory (by
    RIM id), NVIDIA's roots, the admin's default policy for interop checks with revocation off (the sample's OCSP
    answers of its day are not available), its clock pinned to 2025-01-15."""
    report = parse_report(decode_report_text(sample.report))
    for name, rim_id in zip(RIMS, (driver_rim_id(report, "GH100"), vbios_rim_id(report)), strict=True):
        (rim_dir / f"{rim_id}.swidtag").write_bytes(sample.rim(name))
    verifier = Verifier(TrustStore.default(), rim_source=DirectoryRimSource(rim_dir))
    policies = {"strict": P.Policy(revocation=RevocationMode.OFF)}
    return ServiceCore(lambda registered: GuestVerificationService(
        None, verifier, signer, AttestationSettings(), "gpu.cc-gpu.io", policies, clock=lambda: AT_2025,
        registered=registered, limiter=RateLimiter(1000, 1000)))


@pytest.fixture(scope="module")
def sdk_python() -> Path:
    return nvidia_sdk_python(SDK_VERSION)


@pytest.fixture(scope="module", params=["stand-in server and core", "attest serve's server and core"])
def front(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          nvidia_211: Sample) -> Iterator[Front]:
    certs = pki.make(tmp_path_factory.mktemp("front-pki"))
    key = ec.generate_private_key(ec.SECP384R1())
    signer = TokenSigner(key, kid="interop-1")
    verifier = TokenVerifier({"interop-1": key.public_key()})
    if request.param == "stand-in server and core":
        core = InteropCore(Verifier(TrustStore.default()), P.Policy(revocation=RevocationMode.OFF), at=AT_2025,
                           rims=[nvidia_211.rim(name) for name in RIMS])
        with RouteServer(certs.serving.cert, certs.serving.key) as server:
            register_nvidia_routes(server, core, NvidiaTokens(signer))
            yield Front(server.base_url, certs.ca.cert, core, verifier)
        return
    service = _service_core(nvidia_211, signer, tmp_path_factory.mktemp("rims"))
    real = ServiceServer(("127.0.0.1", 0), certs.serving.cert, certs.serving.key)
    register_nvidia_routes(real, service, NvidiaTokens(signer))
    real.start()
    try:
        yield Front(f"https://localhost:{real.port}", certs.ca.cert, service, verifier)
    finally:
        real.stop()


def sdk(sdk_python: Path, front: Front, tmp: Path, report: bytes, chain: bytes, nonce: bytes,
        path: str = "/v3/attest/gpu") -> dict[str, Any]:
    return run_sdk(sdk_python, front.url + path, front.ca, tmp, sdk_evidence(report, chain), nonce, POLICY)


@pytest.mark.parametrize("path", ["/v3/attest/gpu", "/v4/attest/gpu"])
def test_sdk_accepts_the_sample_and_validates_the_tokens(sdk_python: Path, front: Front, nvidia_211: Sample,
                                                         tmp_path: Path, path: str) -> None:
    front.core.register(nvidia_211.nonce)
    result = sdk(sdk_python, front, tmp_path, decode_report_text(nvidia_211.report), nvidia_211.chain,
                     nvidia_211.nonce, path)
    assert result["attest"] is True
    assert result["validate"] is True
    (kind, overall), detached = service_eat(result["token"])
    assert kind == "JWT" and list(detached) == ["GPU-0"]
    claims = front.verifier.verify(overall, datetime.now(UTC),
                                   nonce=nvidia_211.nonce.hex())
    assert claims["submods"]["GPU-0"][0] == "DIGEST"
    gpu = front.verifier.verify(detached["GPU-0"], datetime.now(UTC))
    assert gpu["hwmodel"].startswith("GH100") and gpu["x-cc-gpu-verified-at"].startswith("2025-01-15")


def test_sdk_rejects_tampered_evidence(sdk_python: Path, front: Front, nvidia_211: Sample, tmp_path: Path) -> None:
    report = bytearray(decode_report_text(nvidia_211.report))
    report[120] ^= 0x01  # a measurement byte: the report's signature no longer verifies
    front.core.register(nvidia_211.nonce)
    result = sdk(sdk_python, front, tmp_path, bytes(report), nvidia_211.chain, nvidia_211.nonce)
    assert result["attest"] is False
    assert result["validate"] is False
    (_, overall), _detached = service_eat(result["token"])
    claims = front.verifier.verify(overall, datetime.now(UTC), require_ok=False)
    assert claims["x-nvidia-overall-att-result"] is False
    assert "x-nvidia-gpu-attestation-report-signature-verified" in claims["x-cc-gpu-failed-checks"]


def test_sdk_is_refused_an_unregistered_challenge(sdk_python: Path, front: Front, nvidia_211: Sample,
                                                  tmp_path: Path) -> None:
    result = sdk(sdk_python, front, tmp_path, decode_report_text(nvidia_211.report), nvidia_211.chain,
                     nvidia_211.nonce)
    assert result["attest"] is False
    assert result["validate"] is False
