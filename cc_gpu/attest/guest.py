"""The vocabulary of the guest attestation path, shared by the VM-side collector, the verification service and any
HTTP front placed before it.

A GPU in CC mode answers attestation requests only to the driver inside the confidential VM, so its evidence is
collected there and sent to the verification service; these types are what crosses that boundary. They are plain
data, pure (no host, no Kubernetes), so that a collector inside the guest and every front of the service agree on
them without importing each other.

- `GuestEvidence`: one GPU's evidence as the guest's driver returned it (the SPDM report, the device certificate
  chain in PEM, the architecture name NVML reports, e.g. `HOPPER`).
- `SubmissionResult`: the service's answer to one submission (one verdict per GPU, the token when accepted, the
  failing checks when not, and the claim the challenge belonged to, `None` for an admin-registered challenge).
- `Request` / `Response`: the HTTP shapes a route handler of the service sees, so that further fronts (an
  NVIDIA-compatible API) add routes without knowing the server's internals.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cc_gpu.attest.verdict import Verdict

SUBMIT_PATH = "/v1/guest/attest"
"""The guest path's route on the verification service."""
MAX_GPUS = 16


@dataclass(frozen=True)
class GuestEvidence:
    """One GPU's evidence from inside the guest: the SPDM GET_MEASUREMENTS report, the chain (PEM), the arch."""

    report: bytes
    cert_chain_pem: bytes
    arch: str


@dataclass(frozen=True)
class SubmissionResult:
    """The service's answer to one submission of evidence for a challenge.

    `accepted` is true only when the challenge was valid and every GPU's verdict passed; `token` is then the signed
    token (never logged). `failed_checks` names what failed: verdict checks, or service checks prefixed `x-cc-gpu-`
    (unknown challenge, reused challenge, identity mismatch, ...). `claim` is `namespace/name` for a claim's challenge
    and `None` for a challenge an admin registered for an interop check."""

    accepted: bool
    per_gpu: tuple[Verdict, ...]
    token: str | None
    failed_checks: tuple[str, ...]
    claim: str | None


@dataclass(frozen=True)
class Request:
    """An HTTP request as a route handler sees it: the path (without the query), the headers, the body bytes, and
    the client's address (used for rate limiting, never as an identity)."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    client: str
    method: str = "POST"
    query: str = ""


@dataclass(frozen=True)
class Response:
    """An HTTP response a route handler returns."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


Handler = Callable[[Request], Response]


class SubmissionVerifier(Protocol):
    """The service's core as a front sees it: verify one submission of evidence for a challenge nonce."""

    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        ...


class RouteTable(Protocol):
    """What a server offers a front that adds routes (e.g. an NVIDIA-compatible API)."""

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        ...


def encode_submission(nonce: bytes, evidence: Sequence[GuestEvidence]) -> bytes:
    """The body of a submission: `{"nonce": hex, "evidence": [{"report": b64, "certChain": b64, "arch": str}]}`."""
    return json.dumps({"nonce": nonce.hex(), "evidence": [
        {"report": base64.b64encode(e.report).decode(), "certChain": base64.b64encode(e.cert_chain_pem).decode(),
         "arch": e.arch} for e in evidence]}).encode()


def decode_submission(body: bytes) -> tuple[bytes, list[GuestEvidence]]:
    """The nonce and evidence of a submission body; `ValueError` names what is wrong."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"body is not JSON: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("nonce"), str) or not isinstance(raw.get("evidence"), list):
        raise ValueError("body must be an object with a hex `nonce` and an `evidence` list")
    try:
        nonce = bytes.fromhex(raw["nonce"])
    except ValueError as e:
        raise ValueError("nonce is not hex") from e
    items = raw["evidence"]
    if not 1 <= len(items) <= MAX_GPUS:
        raise ValueError(f"evidence must list 1 to {MAX_GPUS} GPUs")
    evidence = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"evidence[{i}] is not an object")
        try:
            report = base64.b64decode(str(item.get("report", "")), validate=True)
            chain = base64.b64decode(str(item.get("certChain", "")), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"evidence[{i}]: report and certChain must be base64") from e
        evidence.append(GuestEvidence(report, chain, str(item.get("arch", ""))[:32]))
    return nonce, evidence
