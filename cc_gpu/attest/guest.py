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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cc_gpu.attest.verdict import Verdict


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
