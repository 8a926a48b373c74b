"""The verification service's HTTPS front and its admission controls: the route table other fronts extend, body
limits, typed refusals as HTTP statuses, the per-client rate limit, and admin-registered interop challenges."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cc_gpu.attest.guest import SUBMIT_PATH, GuestEvidence, Request, Response, SubmissionResult, encode_submission
from cc_gpu.attest.ocsp import RevocationChecker
from cc_gpu.attest.sim import Faults, SimulatedCa
from cc_gpu.attest.token import TokenSigner, TokenVerifier
from cc_gpu.attest.verifier import Verifier
from cc_gpu.dra.attestcfg import AttestationSettings, decode_settings
from cc_gpu.dra.guestservice import RATE, UNKNOWN, GuestVerificationService, RateLimiter
from cc_gpu.dra.serviceserver import MAX_BODY, ServiceServer, submission_handler
from cc_gpu.errors import ConfigError
from tests.dra.guest import Pki, make_pki

NONCE = bytes(range(32))


class _Fixed:
    """A service core that answers what it is told (the HTTP layer under test, not the verification)."""

    def __init__(self, result: SubmissionResult) -> None:
        self.result = result
        self.seen: list[tuple[bytes, int, str]] = []

    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        self.seen.append((nonce, len(evidence), client))
        return self.result


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def server(pki: Pki) -> Iterator[ServiceServer]:
    s = ServiceServer(("127.0.0.1", 0), pki.cert, pki.key).start()
    yield s
    s.stop()


def _post(server: ServiceServer, pki: Pki, path: str, body: bytes) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    req = urllib.request.Request(f"https://127.0.0.1:{server.port}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


@pytest.mark.parametrize(("failed", "status"), [((), 200), ((UNKNOWN,), 403), ((RATE,), 429)])
def test_submission_route_maps_results_to_statuses(server: ServiceServer, pki: Pki, failed: tuple[str, ...],
                                                   status: int) -> None:
    core = _Fixed(SubmissionResult(not failed, (), "tok" if not failed else None, failed, "ns/c" if not failed
                                   else None))
    server.add_route("POST", SUBMIT_PATH, submission_handler(core))
    got, body = _post(server, pki, SUBMIT_PATH, encode_submission(NONCE, [GuestEvidence(b"r", b"c", "HOPPER")]))
    assert got == status and body["failedChecks"] == list(failed)
    assert core.seen == [(NONCE, 1, "127.0.0.1")]


@pytest.mark.parametrize(("body", "status"), [(b"not json", 400), (b'{"nonce": "zz", "evidence": []}', 400),
                                              (json.dumps({"nonce": NONCE.hex(), "evidence": [
                                                  {"report": "%%%", "certChain": ""}]}).encode(), 400)])
def test_malformed_bodies_are_refused(server: ServiceServer, pki: Pki, body: bytes, status: int) -> None:
    core = _Fixed(SubmissionResult(True, (), "tok", (), None))
    server.add_route("POST", SUBMIT_PATH, submission_handler(core))
    assert _post(server, pki, SUBMIT_PATH, body)[0] == status
    assert core.seen == []


def test_route_table_is_extensible_and_bounded(server: ServiceServer, pki: Pki) -> None:
    seen: list[Request] = []

    def echo(request: Request) -> Response:
        seen.append(request)
        return Response(200, {"Content-Type": "application/json"}, json.dumps({"n": len(request.body)}).encode())

    server.add_route("POST", "/other/front", echo)
    assert _post(server, pki, "/other/front?x=1", b"abc") == (200, {"n": 3})
    assert (seen[0].path, seen[0].query, seen[0].client) == ("/other/front", "x=1", "127.0.0.1")
    assert _post(server, pki, "/nowhere", b"")[0] == 404
    # A body announced over the limit is refused before it is read.
    conn = http.client.HTTPSConnection("127.0.0.1", server.port,
                                       context=ssl.create_default_context(cafile=str(pki.ca)), timeout=10)
    conn.putrequest("POST", "/other/front")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


def test_rate_limit_per_client() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=2, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b"), "another client has its own bucket"
    now[0] += 1.0
    assert limiter.allow("a") and not limiter.allow("a")


def test_registered_interop_challenge_is_single_use_and_writes_no_claim(tmp_path: Path) -> None:
    ca = SimulatedCa.create(datetime.now(UTC))
    gpu = ca.gpu("interop")
    ev = gpu.evidence(NONCE, Faults())
    # RIMs as an admin's offline bundle serves them.
    verifier = Verifier(ca.trust_store(), rim_source=_Rims(ev.rims),
                        revocation=RevocationChecker(transport=ca.ocsp_responder()))
    signer = TokenSigner(ec.generate_private_key(ec.SECP384R1()), "k")
    service = GuestVerificationService(None, verifier, signer, AttestationSettings(), "gpu.cc-gpu.io",
                                       registered=[NONCE], limiter=RateLimiter(1000, 1000))
    evidence = [GuestEvidence(ev.report, ev.cert_chain_pem, "HOPPER")]
    first = service.verify_submission(NONCE, evidence, client="c")
    assert first.accepted and first.claim is None and first.token is not None
    claims = TokenVerifier({"k": signer.key.public_key()}).verify(first.token, datetime.now(UTC), nonce=NONCE.hex())
    assert claims["x-cc-gpu-interop"] is True and claims["x-cc-gpu-evidence"] == "guest"
    assert service.verify_submission(NONCE, evidence, client="c").failed_checks == (UNKNOWN,)


class _Rims:
    def __init__(self, rims: dict[str, bytes]) -> None:
        self.rims = rims

    def fetch(self, rim_id: str) -> bytes | None:
        return self.rims.get(rim_id)


@pytest.mark.parametrize(("value", "ok"), [([NONCE.hex()], True), (["00"], False), ([NONCE.hex()[:-1] + "g"], False),
                                           ("x", False)])
def test_interop_challenges_in_the_settings(value: Any, ok: bool) -> None:
    if ok:
        assert decode_settings({"interop_challenges": value}, AttestationSettings()).interop_challenges == (
            NONCE.hex(),)
    else:
        with pytest.raises(ConfigError, match="interop_challenges"):
            decode_settings({"interop_challenges": value}, AttestationSettings())
