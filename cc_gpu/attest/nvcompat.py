"""A front of the verification service that speaks the GPU API of NVIDIA's remote attestation service (NRAS).

Clients written for NVIDIA's service (NVIDIA's attestation SDK in remote mode, Confidential Containers' verifier
given a service URL) can then attest GPUs against cc-gpu's own service in a cluster that cannot reach NVIDIA. The
shapes are those the SDK (nv-attestation-sdk 2.7.3) sends and reads:

- `POST /v3/attest/gpu` (and `/v4/attest/gpu`), JSON body
  `{"nonce": <64 hex>, "evidence_list": [{"evidence": <base64 SPDM report>, "certificate": <base64 PEM chain>}],
  "arch": "HOPPER", "claims_version": "3.0"}`. An `Authorization: Bearer` service key is ignored: the challenge is
  the capability (an unknown or used nonce is refused, 403), as for the service's own API.
- 200 with the detached EAT `[["JWT", <overall token>], {"GPU-0": <token>, ...}]`: the overall token carries
  `x-nvidia-overall-att-result` (the service's decision for the whole submission), `x-nvidia-ver` "3.0",
  `eat_nonce` and `submods` (each GPU token's SHA-256 digest); each GPU token carries NVIDIA's claims 3.0 names for
  that GPU's checks, with the certificate-chain claims as objects (`x-nvidia-cert-status`,
  `x-nvidia-cert-ocsp-status`) as NVIDIA's policies expect them. A revocation status is reported as checked (`off`
  when the admin's policy switched revocation off), never as `good` when it was not asked.
- `GET /.well-known/jwks.json`: the token key as a JWK with an `x5c` certificate (the SDK derives this URL from the
  service URL's scheme and host and reads the key from `x5c`).

Tokens are ES384, signed by the service's configured key (`TokenSigner`); they are issued at the service's clock
time (the verification time of replayed evidence stays in `x-cc-gpu-verified-at`). Malformed requests get a 400
with a JSON error naming what is wrong; nothing here raises to the server, and no token or evidence is logged.
Only claims version 3.0 is served (2.0 is NVIDIA's older layout; a client asking for it gets a 400 that says so).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm

from cc_gpu.attest import policy as P
from cc_gpu.attest.errors import TokenError
from cc_gpu.attest.guest import GuestEvidence, Request, Response, RouteTable, SubmissionResult, SubmissionVerifier
from cc_gpu.attest.token import TokenSigner
from cc_gpu.attest.verdict import PASS, Verdict
from cc_gpu.errors import AttestationError, CcGpuError, TemporaryError

log = logging.getLogger(__name__)

GPU_PATHS = ("/v3/attest/gpu", "/v4/attest/gpu")
JWKS_PATH = "/.well-known/jwks.json"
CLAIMS_VERSION = "3.0"
MAX_BODY = 1 << 20  # a GPU's evidence is about 10 KiB (report + PEM chain); eight GPUs fit many times over
MAX_GPUS = 16
NONCE_BYTES = 32
# The chip prefix of the hardware model (the BROM certificate's CN, e.g. "GH100 A01 GSP BROM") per NRAS arch name.
ARCH_CHIPS: Mapping[str, str] = {"HOPPER": "GH", "BLACKWELL": "GB"}
_CERT_CHAIN_CLAIMS = (
    (P.CHECK_CHAIN, "device"),
    (P.rim_check("driver", "cert-chain"), "driver-rim"),
    (P.rim_check("vbios", "cert-chain"), "vbios-rim"),
)
_JSON = {"Content-Type": "application/json"}


class NvCompatRequestError(AttestationError):
    """A request to the NVIDIA-compatible API is malformed; answered with a 400 and this message."""


@dataclass(frozen=True)
class GpuRequest:
    """A parsed `POST /v3/attest/gpu` body."""

    nonce: bytes
    evidence: tuple[GuestEvidence, ...]
    arch: str
    claims_version: str


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise NvCompatRequestError(f"{what} must be a non-empty base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise NvCompatRequestError(f"{what} is not valid base64: {e}") from e


def parse_gpu_request(body: bytes) -> GpuRequest:
    """The request as NVIDIA's SDK sends it; every departure is a `NvCompatRequestError` naming the field."""
    if len(body) > MAX_BODY:
        raise NvCompatRequestError(f"request body is {len(body)} bytes, at most {MAX_BODY} are accepted")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NvCompatRequestError(f"request body is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise NvCompatRequestError("request body must be a JSON object")
    nonce_text = data.get("nonce")
    if not isinstance(nonce_text, str) or len(nonce_text) != 2 * NONCE_BYTES:
        raise NvCompatRequestError(f"nonce must be {2 * NONCE_BYTES} hexadecimal characters")
    try:
        nonce = bytes.fromhex(nonce_text)
    except ValueError as e:
        raise NvCompatRequestError("nonce is not hexadecimal") from e
    arch = data.get("arch")
    if not isinstance(arch, str) or arch not in ARCH_CHIPS:
        raise NvCompatRequestError(f"arch must be one of {sorted(ARCH_CHIPS)}")
    claims_version = data.get("claims_version", CLAIMS_VERSION)
    if claims_version != CLAIMS_VERSION:
        raise NvCompatRequestError(
            f"claims_version {claims_version!r} is not served; this service answers {CLAIMS_VERSION}"
        )
    items = data.get("evidence_list")
    if not isinstance(items, list) or not items:
        raise NvCompatRequestError("evidence_list must be a non-empty list")
    if len(items) > MAX_GPUS:
        raise NvCompatRequestError(f"evidence_list holds {len(items)} entries, at most {MAX_GPUS} are accepted")
    evidence = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise NvCompatRequestError(f"evidence_list[{i}] must be an object")
        report = _b64(item.get("evidence"), f"evidence_list[{i}].evidence")
        chain = _b64(item.get("certificate"), f"evidence_list[{i}].certificate")
        if b"-----BEGIN CERTIFICATE-----" not in chain:
            raise NvCompatRequestError(f"evidence_list[{i}].certificate is not a base64-encoded PEM chain")
        evidence.append(GuestEvidence(report=report, cert_chain_pem=chain, arch=arch))
    return GpuRequest(nonce=nonce, evidence=tuple(evidence), arch=arch, claims_version=claims_version)


def gpu_claims(verdict: Verdict, arch: str) -> dict[str, Any]:
    """One GPU's claims in NVIDIA's claims 3.0 layout, from the verdict's checks (nothing claimed beyond them)."""
    claims = verdict.claims()
    for name, label in _CERT_CHAIN_CLAIMS:
        claims[name] = {
            "x-nvidia-cert-status": "valid" if verdict.check(name).status == PASS else "invalid",
            "x-nvidia-cert-ocsp-status": verdict.revocation.get(label, "unknown"),
        }
    for kind in P.RIM_KINDS:
        steps = ("schema-validated", "signature-verified")
        available = all(verdict.check(P.rim_check(kind, s)).status == PASS for s in steps)
        claims[f"x-nvidia-gpu-{kind}-rim-measurements-available"] = available
    chip = (verdict.identity.hwmodel or "").split(" ")[0]
    claims["x-nvidia-gpu-arch-check"] = bool(chip) and chip.startswith(ARCH_CHIPS.get(arch, "\0"))
    claims["x-nvidia-ver"] = CLAIMS_VERSION
    return claims


def utc_now() -> datetime:
    return datetime.now(UTC)


def signer_certificate(signer: TokenSigner, *, now: datetime, days: int = 3650) -> x509.Certificate:
    """A self-signed certificate over the token key, for the JWKS `x5c` member (clients read the key from it).

    It asserts nothing beyond the key: the trust a client places in the service's tokens comes from the HTTPS
    channel it fetched the JWKS over (the service's CA), as with NVIDIA's service.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cc-gpu token signer {signer.kid}")])
    public = signer.key.public_key()
    point = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    serial = int.from_bytes(hashlib.sha256(point).digest()[:16], "big") >> 1
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial or 1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(signer.key, hashes.SHA384())
    )


class NvidiaTokens:
    """Issues the detached EAT of NVIDIA's GPU API and publishes the JWKS that verifies it."""

    def __init__(
        self,
        signer: TokenSigner,
        certificate: x509.Certificate | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.signer = signer
        self.clock = clock
        cert = certificate if certificate is not None else signer_certificate(signer, now=clock())
        if cert.public_key() != signer.key.public_key():
            raise TokenError("the token certificate is not for the token signing key")
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(signer.key.public_key(), as_dict=True)
        jwk.update(
            {
                "kid": signer.kid,
                "alg": "ES384",
                "use": "sig",
                "x5c": [base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")],
            }
        )
        self.jwks_body = json.dumps({"keys": [jwk]}, separators=(",", ":")).encode()

    def eat(self, request: GpuRequest, result: SubmissionResult) -> list[Any]:
        """`[["JWT", overall], {"GPU-0": token, ...}]` for a submission the service judged."""
        issued = self.clock()
        nonce = request.nonce.hex()
        detached: dict[str, str] = {}
        submods: dict[str, Any] = {}
        for i, verdict in enumerate(result.per_gpu):
            claims = gpu_claims(verdict, request.arch)
            claims["eat_nonce"] = nonce
            token = self.signer.sign_claims(claims, issued)
            detached[f"GPU-{i}"] = token
            submods[f"GPU-{i}"] = ["DIGEST", ["SHA256", hashlib.sha256(token.encode()).hexdigest()]]
        overall: dict[str, Any] = {
            "x-nvidia-ver": CLAIMS_VERSION,
            "x-nvidia-overall-att-result": result.accepted,
            "eat_nonce": nonce,
            "submods": submods,
            "x-cc-gpu-failed-checks": list(result.failed_checks),
        }
        if result.claim is not None:
            overall["x-cc-gpu-claim"] = result.claim
        return [["JWT", self.signer.sign_claims(overall, issued)], detached]


# The service's refusals that are not about the challenge, by the check names its core reports (the guest path's
# vocabulary; a check may carry a detail after its name).
_REFUSALS = (
    ("x-cc-gpu-rate-limited", 429, "too many requests from this client, retry later"),
    ("x-cc-gpu-service-unavailable", 503, "verification unavailable, retry later"),
    ("x-cc-gpu-evidence-malformed", 400, "malformed evidence"),
)


def _refusal(failed: list[str]) -> tuple[int, str]:
    for name, status, message in _REFUSALS:
        if any(check.startswith(name) for check in failed):
            return status, message
    return 403, "challenge refused"


def _error(status: int, message: str, **extra: Any) -> Response:
    body = {"errorCode": status, "message": message, **extra}
    return Response(status=status, headers=dict(_JSON), body=json.dumps(body).encode())


class NvidiaGpuApi:
    """The route handlers; `register_nvidia_routes` adds them to a server."""

    def __init__(self, core: SubmissionVerifier, tokens: NvidiaTokens) -> None:
        self.core = core
        self.tokens = tokens

    def attest_gpu(self, request: Request) -> Response:
        try:
            parsed = parse_gpu_request(request.body)
        except NvCompatRequestError as e:
            log.info("nvidia-compatible GPU request from %s refused: %s", request.client, e)
            return _error(400, str(e))
        try:
            result = self.core.verify_submission(parsed.nonce, parsed.evidence, client=request.client)
        except TemporaryError as e:
            log.warning("nvidia-compatible GPU request from %s could not be judged now: %s", request.client, e)
            response = _error(503, f"verification unavailable, retry later: {e}")
            if e.retry_after is not None:
                response.headers["Retry-After"] = str(max(1, round(e.retry_after)))
            return response
        except CcGpuError as e:
            log.error("nvidia-compatible GPU request from %s failed: %s", request.client, e)
            return _error(500, f"verification failed: {e}")
        if not result.per_gpu:  # refused before any evidence was judged: unknown or used challenge, and the like
            failed = list(result.failed_checks)
            log.info("nvidia-compatible GPU request from %s refused: %s", request.client, failed)
            status, message = _refusal(failed)
            return _error(status, message, failed_checks=failed)
        try:
            eat = self.tokens.eat(parsed, result)
        except TokenError as e:
            log.error("nvidia-compatible GPU tokens could not be signed: %s", e)
            return _error(500, f"tokens could not be signed: {e}")
        log.info(
            "nvidia-compatible GPU attestation from %s: %d GPU(s), %s",
            request.client,
            len(result.per_gpu),
            "accepted" if result.accepted else f"rejected {list(result.failed_checks)}",
        )
        return Response(status=200, headers=dict(_JSON), body=json.dumps(eat, separators=(",", ":")).encode())

    def jwks(self, request: Request) -> Response:
        return Response(status=200, headers={**_JSON, "Cache-Control": "max-age=300"}, body=self.tokens.jwks_body)


def register_nvidia_routes(server: RouteTable, core: SubmissionVerifier, tokens: NvidiaTokens) -> NvidiaGpuApi:
    """Adds the NVIDIA-compatible GPU endpoints and the JWKS to `server`, judging submissions with `core`."""
    api = NvidiaGpuApi(core, tokens)
    for path in GPU_PATHS:
        server.add_route("POST", path, api.attest_gpu)
    server.add_route("GET", JWKS_PATH, api.jwks)
    return api

