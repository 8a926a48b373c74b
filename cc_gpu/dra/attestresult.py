"""The records an attestation leaves: per GPU, per device, per claim; and how they are written on the claim.

Kept apart from the engine so the prepare path (`state.py`) and the status writer can use them without the
machinery that produces them. `DeviceResult.condition()` is the `Attested` condition and `DeviceResult.data()` the
compact verdict for `status.devices[].data` (trimmed under the API's 10 KiB limit); neither ever carries the token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cc_gpu.attest.verdict import Verdict
from cc_gpu.dra.challenge import Challenge
from cc_gpu.dra.claimstatus import DeviceStatus, apply_device_status
from cc_gpu.kube.api import KubeApi

CONDITION = "Attested"
HOST_PREFLIGHT = "host, pre-flight"
"""The label of a host-side verdict: evidence the host driver gave before the GPU went to the VM. It says the GPU's
firmware and configuration passed policy then; it says nothing about what the guest later talks to."""
GUEST = "guest"
"""The label of a guest-side verdict: evidence the GPU gave the driver inside the confidential VM."""
TOKEN_ENV_PREFIX = "CC_GPU_ATTESTATION_TOKEN_"  # noqa: S105 - a variable name, not a secret
TOKEN_MOUNT_DIR = "/run/cc-gpu/attestation"  # noqa: S105 - a path, not a secret
MAX_DATA_BYTES = 10 * 1024
MAX_CHECK_DETAIL = 160


def semver_of_driver(version: str | None) -> str | None:
    """NVIDIA driver versions as semver: `550.90.07` -> `550.90.7` (leading zeros dropped); None if not numeric."""
    if not version:
        return None
    parts = version.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    parts += ["0"] * (3 - len(parts))
    return ".".join(str(int(p)) for p in parts)


def gpu_token_name(bdf: str) -> str:
    return "gpu-" + re.sub(r"[^0-9a-z]", "-", bdf.lower())


def token_env_name(bdf: str) -> str:
    """`0000:18:00.0` -> `CC_GPU_ATTESTATION_TOKEN_0000_18_00_0`."""
    return TOKEN_ENV_PREFIX + re.sub(r"[^0-9A-Z]", "_", bdf.upper())


@dataclass(frozen=True)
class GpuResult:
    """One GPU's outcome: its verdict (None when evidence could not be had acceptably) and the token when accepted."""

    bdf: str
    ok: bool
    reasons: tuple[str, ...]  # failing checks ("name: detail") or the refusal
    source: str  # nvml | simulated | directory | discovery | <provider>+rebind | none
    verdict: Verdict | None = None
    collected_at: datetime | None = None
    token: str | None = None
    kid: str | None = None
    jti: str | None = None
    nonce_ours: bool = True  # False: the evidence answers a nonce this prepare did not choose (directory, discovery)
    evidence: str = HOST_PREFLIGHT  # where the evidence came from: the host before the VM ran, or the guest

    def compact(self) -> dict[str, Any]:
        v = self.verdict
        out: dict[str, Any] = {"bdf": self.bdf, "ok": self.ok, "evidence": self.evidence, "evidenceSource": self.source,
                               "nonce": "ours" if self.nonce_ours else "not ours"}
        if v is not None:
            out.update({"ueid": v.identity.ueid, "hwmodel": v.identity.hwmodel, "driverVersion": v.driver_version,
                        "vbiosVersion": v.vbios_version, "nonceValue": v.nonce, "verifiedAt": v.verified_at.isoformat(),
                        "revocation": v.revocation_mode})
        if self.collected_at is not None:
            out["collectedAt"] = self.collected_at.isoformat()
        if self.kid:
            out.update({"kid": self.kid, "jti": self.jti})
        if self.reasons:
            out["failed"] = [r[:MAX_CHECK_DETAIL] for r in self.reasons]
        return out


@dataclass(frozen=True)
class DeviceResult:
    pool: str
    device: str
    request: str
    required: bool
    policy: str  # the sources of the policy applied, e.g. "class:strict+claim:inline"
    gpus: tuple[GpuResult, ...]
    applied: Mapping[str, Any] | None = None  # every knob of the policy actually applied
    challenge: Mapping[str, Any] | None = None  # guest path: the challenge record awaiting the guest's evidence

    @property
    def pending(self) -> bool:
        """Guest path: the verdict will come from the verification service, on the guest's evidence."""
        return self.challenge is not None

    @property
    def ok(self) -> bool:
        return not self.pending and all(g.ok for g in self.gpus)

    def condition(self, now: str) -> dict[str, Any]:
        if self.pending:
            return {"type": CONDITION, "status": "Unknown", "reason": "AwaitingGuestEvidence",
                    "message": (f"evidence: guest; a challenge awaits the GPU evidence from inside the VM, to be "
                                f"verified under policy {self.policy!r} by the verification service")[:1024],
                    "lastTransitionTime": now}
        if self.ok:
            foreign = " (nonce not ours: evidence age from an unauthenticated timestamp)" if any(
                not g.nonce_ours for g in self.gpus) else ""
            message = (f"GPU evidence (evidence: {self._evidence()}) satisfies policy {self.policy!r}{foreign}; "
                       "verdict token issued to the pod")
        else:
            reasons = "; ".join(f"{g.bdf}: {', '.join(g.reasons)}" for g in self.gpus if not g.ok)
            message = f"GPU evidence (evidence: {self._evidence()}) fails policy {self.policy!r}: {reasons}"
        return {
            "type": CONDITION,
            "status": "True" if self.ok else "False",
            "reason": "EvidenceVerified" if self.ok else "EvidenceRejected",
            "message": message[:1024],
            "lastTransitionTime": now,
        }

    def _evidence(self) -> str:
        return ", ".join(sorted({g.evidence for g in self.gpus})) or HOST_PREFLIGHT

    def data(self) -> dict[str, Any]:
        """The compact verdict for `status.devices[].data`, trimmed to stay under the 10 KiB limit."""
        out: dict[str, Any] = {"attestation": {"ok": self.ok, "evidence": self._evidence(), "required": self.required,
                                               "policy": self.policy,
                                               "gpus": [g.compact() for g in self.gpus]}}
        if self.applied is not None:
            out["attestation"]["applied"] = dict(self.applied)
        if self.challenge is not None:
            out["attestation"]["challenge"] = dict(self.challenge)
            out["attestation"]["ok"] = None  # not judged yet: the verdict comes from the guest's evidence
            out["attestation"]["state"] = "awaiting guest evidence"
        while len(json.dumps(out)) > MAX_DATA_BYTES and any(g.get("failed") for g in out["attestation"]["gpus"]):
            for g in out["attestation"]["gpus"]:
                if g.get("failed"):
                    g["failed"] = g["failed"][: max(1, len(g["failed"]) // 2)]
        return out


@dataclass(frozen=True)
class ClaimAttestation:
    devices: tuple[DeviceResult, ...]
    guest_challenge: Challenge | None = None  # minted when a device takes the guest path (its nonce is a secret)

    def for_device(self, pool: str, device: str) -> DeviceResult | None:
        return next((d for d in self.devices if (d.pool, d.device) == (pool, device)), None)

    @property
    def blocking(self) -> tuple[DeviceResult, ...]:
        return tuple(d for d in self.devices if d.required and not d.ok and not d.pending)

    @property
    def challenge(self) -> Mapping[str, Any] | None:
        """The claim's guest challenge record, when a device takes the guest path (one challenge per claim)."""
        return next((d.challenge for d in self.devices if d.challenge is not None), None)


def update_device_status(
    kube: KubeApi,
    namespace: str,
    name: str,
    driver: str,
    entries: Mapping[tuple[str, str], dict[str, Any]],
    *,
    uid: str | None = None,
) -> None:
    """Apply this driver's `status.devices[]` entries for the given (pool, device) keys (see `claimstatus.py`)."""
    devices = [
        DeviceStatus(pool, device, tuple(entry.get("conditions") or ()), entry.get("data"))
        for (pool, device), entry in entries.items()
    ]
    apply_device_status(kube, namespace, name, driver, devices, uid=uid)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
