"""The result of a verification: one entry per check, an overall result, and the claims a token carries.

Check names are NVIDIA's claim names where one exists, so relying-party policies written against NVIDIA's claims
carry over. A check is `pass`, `fail`, `not-applicable` (e.g. no FWID in the report), `unverifiable` (e.g. no RIM
and the policy only reports that) or `skipped` (an earlier failure made it meaningless). The overall result is true
only when every check the policy requires is `pass` or `not-applicable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

PASS = "pass"  # noqa: S105 - a check status, not a secret
FAIL = "fail"
NOT_APPLICABLE = "not-applicable"
UNVERIFIABLE = "unverifiable"
SKIPPED = "skipped"
CLAIMS_VERSION = "3.0"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str = ""
    required: bool = True

    @property
    def satisfied(self) -> bool:
        return self.status in (PASS, NOT_APPLICABLE)


@dataclass(frozen=True)
class GpuIdentity:
    """Who was attested: the leaf certificate's serial (ueid), the BROM certificate's CN (hwmodel), the OEM id."""

    ueid: str | None = None
    hwmodel: str | None = None
    oemid: str | None = None


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    nonce: str
    verified_at: datetime
    revocation_mode: str
    identity: GpuIdentity = GpuIdentity()
    driver_version: str | None = None
    vbios_version: str | None = None
    mismatched_indexes: tuple[int, ...] = ()
    revocation: Mapping[str, str] = field(default_factory=dict)
    gpu_mode: str | None = None  # spt | mpt | ppcie, only when the evidence carries it

    @property
    def measurements_verified(self) -> bool:
        """Were the runtime measurements compared with signed reference values and found equal?"""
        return any(c.name == "measres" and c.status == PASS for c in self.checks)

    @property
    def result_text(self) -> str:
        """`ACCEPTED`, `ACCEPTED (measurements not verified)` or `REJECTED`: never more than was checked."""
        if not self.ok:
            return "REJECTED"
        return "ACCEPTED" if self.measurements_verified else "ACCEPTED (measurements not verified)"

    @property
    def ok(self) -> bool:
        return all(c.satisfied for c in self.checks if c.required)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.required and not c.satisfied)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def claims(self) -> dict[str, Any]:
        """NVIDIA-style per-GPU claims: booleans per check, `measres`, versions and identity."""
        out: dict[str, Any] = {}
        for c in self.checks:
            if c.name == "measres":
                out["measres"] = {PASS: "success", FAIL: "fail"}.get(c.status, c.status)
            elif c.name.endswith("-version") and c.name.startswith("x-nvidia-gpu-") and "rim" not in c.name:
                out[c.name] = (self.driver_version if "driver" in c.name else self.vbios_version) or ""
            else:
                out[c.name] = c.status == PASS
        # As NVIDIA's verifier (NVAT `generate_set_measurement_claims`): secure boot and debug status are asserted only
        # when every reference measurement matched, since that is what shows the firmware booted in its production
        # (non-debug) configuration; otherwise the claims are left out, never set to a guess.
        if out.get("measres") == "success":
            out["secboot"] = True
            out["dbgstat"] = "disabled"
        if self.gpu_mode is not None:
            out["x-nvidia-gpu-mode"] = self.gpu_mode
        out.update(
            {
                "x-nvidia-ver": CLAIMS_VERSION,
                "x-nvidia-overall-att-result": self.ok,
                "eat_nonce": self.nonce,
                "ueid": self.identity.ueid,
                "hwmodel": self.identity.hwmodel,
                "oemid": self.identity.oemid,
                "x-cc-gpu-verified-at": self.verified_at.isoformat(),
                "x-cc-gpu-revocation-mode": self.revocation_mode,
                "x-cc-gpu-mismatched-indexes": list(self.mismatched_indexes),
                "x-cc-gpu-ocsp": dict(self.revocation),
            }
        )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "result": self.result_text,
            "measurements_verified": self.measurements_verified,
            "gpu_mode": self.gpu_mode,
            "nonce": self.nonce,
            "verified_at": self.verified_at.isoformat(),
            "revocation_mode": self.revocation_mode,
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "ueid": self.identity.ueid,
            "hwmodel": self.identity.hwmodel,
            "oemid": self.identity.oemid,
            "mismatched_indexes": list(self.mismatched_indexes),
            "failed_checks": [c.name for c in self.failed],
            "checks": [
                {"name": c.name, "status": c.status, "required": c.required, "detail": c.detail} for c in self.checks
            ],
        }
