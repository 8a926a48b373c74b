"""Attestation policy as data: which checks must pass, version minimums, evidence age, revocation, RIM handling.

A policy is a TOML file decoded strictly (unknown keys are errors, so a typo never silently weakens a policy) into
a frozen `Policy`. `Policy()` with no arguments is the strict default: every check required, revocation online,
certificate hold not tolerated, a missing RIM fails, evidence at most five minutes old.

    required_checks = ["..."]          # optional; default: all checks (names as in the verdict)
    [versions]
    min_driver = "550.54.14"
    min_vbios = "96.00.5E.00.01"
    [evidence]
    max_age_seconds = 300
    [revocation]
    mode = "online"                    # online | cached | off
    allow_certificate_hold = false
    [rim]
    missing = "fail"                   # fail | report
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cc_gpu.attest import strictness
from cc_gpu.attest.errors import PolicyError
from cc_gpu.attest.ocsp import RevocationMode

# Every check the verifier runs, in the order it reports them. NVIDIA's claim names where one exists.
CHECK_PARSED = "x-nvidia-gpu-attestation-report-parsed"
CHECK_NONCE = "x-nvidia-gpu-attestation-report-nonce-match"
CHECK_CHAIN = "x-nvidia-gpu-attestation-report-cert-chain"
CHECK_SIGNATURE = "x-nvidia-gpu-attestation-report-signature-verified"
CHECK_FWID = "x-nvidia-gpu-attestation-report-cert-chain-fwid-match"
CHECK_DRIVER_VERSION = "x-nvidia-gpu-driver-version"
CHECK_VBIOS_VERSION = "x-nvidia-gpu-vbios-version"
CHECK_EVIDENCE_AGE = "x-cc-gpu-evidence-age"
CHECK_INDEX_CONFLICT = "x-nvidia-gpu-vbios-index-no-conflict"
CHECK_MEASUREMENTS = "measres"


def rim_check(kind: str, what: str) -> str:
    """`x-nvidia-gpu-{driver,vbios}-rim-{fetched,schema-validated,cert-chain,signature-verified,version-match}`."""
    return f"x-nvidia-gpu-{kind}-rim-{what}"


RIM_KINDS = ("driver", "vbios")
RIM_STEPS = ("fetched", "schema-validated", "cert-chain", "signature-verified", "version-match")
ALL_CHECKS: tuple[str, ...] = (
    CHECK_PARSED,
    CHECK_NONCE,
    CHECK_CHAIN,
    CHECK_SIGNATURE,
    CHECK_FWID,
    CHECK_DRIVER_VERSION,
    CHECK_VBIOS_VERSION,
    CHECK_EVIDENCE_AGE,
    *(rim_check(kind, step) for kind in RIM_KINDS for step in RIM_STEPS),
    CHECK_INDEX_CONFLICT,
    CHECK_MEASUREMENTS,
)


def driver_version_key(text: str) -> tuple[int, ...]:
    """`550.90.07` -> (550, 90, 7)."""
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError as e:
        raise PolicyError(f"not a driver version: {text!r}") from e


def vbios_version_key(text: str) -> tuple[int, ...]:
    """`96.00.5E.00.01` -> (0x96, 0, 0x5E, 0, 1)."""
    try:
        return tuple(int(part, 16) for part in text.strip().split("."))
    except ValueError as e:
        raise PolicyError(f"not a VBIOS version: {text!r}") from e


@dataclass(frozen=True)
class Policy:
    required_checks: frozenset[str] = field(default_factory=lambda: frozenset(ALL_CHECKS))
    min_driver: str | None = None
    min_vbios: str | None = None
    max_evidence_age_s: float | None = 300.0
    revocation: RevocationMode = RevocationMode.ONLINE
    allow_certificate_hold: bool = False
    missing_rim_fails: bool = True

    def __post_init__(self) -> None:
        unknown = self.required_checks - set(ALL_CHECKS)
        if unknown:
            raise PolicyError(f"unknown check names in policy: {sorted(unknown)}")
        if self.min_driver is not None:
            driver_version_key(self.min_driver)
        if self.min_vbios is not None:
            vbios_version_key(self.min_vbios)
        if self.max_evidence_age_s is not None and self.max_evidence_age_s <= 0:
            raise PolicyError("max_age_seconds must be positive")

    def with_revocation(self, mode: RevocationMode) -> Policy:
        return replace(self, revocation=mode)

    def combine(self, other: Policy) -> Policy:
        """The policy that passes exactly when both pass: every field at the stricter value (`strictness`)."""
        s = strictness
        return Policy(
            required_checks=s.combine_checks(self.required_checks, other.required_checks),
            min_driver=_opt_str(s.MIN_DRIVER.stricter(self.min_driver, other.min_driver)),
            min_vbios=_opt_str(s.MIN_VBIOS.stricter(self.min_vbios, other.min_vbios)),
            max_evidence_age_s=_opt_float(s.MAX_EVIDENCE_AGE.stricter(self.max_evidence_age_s,
                                                                       other.max_evidence_age_s)),
            revocation=RevocationMode(str(s.REVOCATION.stricter(self.revocation.value, other.revocation.value))),
            allow_certificate_hold=bool(s.ALLOW_CERTIFICATE_HOLD.stricter(self.allow_certificate_hold,
                                                                          other.allow_certificate_hold)),
            missing_rim_fails=s.MISSING_RIM.stricter(_rim(self), _rim(other)) == "fail",
        )

    def describe(self) -> dict[str, Any]:
        """The knobs as the claim's config names them (for the claim status and the token)."""
        return {
            "minDriverVersion": self.min_driver, "minVbiosVersion": self.min_vbios,
            "maxEvidenceAgeSeconds": self.max_evidence_age_s, "revocation": self.revocation.value,
            "allowCertificateHold": self.allow_certificate_hold, "missingRim": _rim(self),
            "requiredChecks": "all" if self.required_checks == frozenset(ALL_CHECKS) else sorted(self.required_checks),
        }


def _rim(policy: Policy) -> str:
    return "fail" if policy.missing_rim_fails else "report"


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


_SCHEMA: Mapping[str, frozenset[str]] = {
    "": frozenset({"required_checks", "versions", "evidence", "revocation", "rim"}),
    "versions": frozenset({"min_driver", "min_vbios"}),
    "evidence": frozenset({"max_age_seconds"}),
    "revocation": frozenset({"mode", "allow_certificate_hold"}),
    "rim": frozenset({"missing"}),
}


def _table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise PolicyError(f"[{name}] must be a table")
    unknown = set(value) - _SCHEMA[name]
    if unknown:
        raise PolicyError(f"unknown keys in [{name}]: {sorted(unknown)}")
    return value


def _typed(value: object, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise PolicyError(f"{where} has the wrong type ({type(value).__name__})")
    return value


def parse_policy(text: str) -> Policy:
    """Decode a policy document; every error is a PolicyError naming the key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"policy is not valid TOML: {e}") from e
    unknown = set(doc) - _SCHEMA[""]
    if unknown:
        raise PolicyError(f"unknown top-level keys in policy: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    if "required_checks" in doc:
        checks = _typed(doc["required_checks"], list, "required_checks")
        kwargs["required_checks"] = frozenset(_typed(c, str, "required_checks[]") for c in checks)
    versions = _table(doc, "versions")
    for key in ("min_driver", "min_vbios"):
        if key in versions:
            kwargs[key] = _typed(versions[key], str, f"versions.{key}")
    evidence = _table(doc, "evidence")
    if "max_age_seconds" in evidence:
        kwargs["max_evidence_age_s"] = float(_typed(evidence["max_age_seconds"], (int, float), "max_age_seconds"))
    revocation = _table(doc, "revocation")
    if "mode" in revocation:
        mode = _typed(revocation["mode"], str, "revocation.mode")
        try:
            kwargs["revocation"] = RevocationMode(mode)
        except ValueError as e:
            raise PolicyError(f"revocation.mode must be online, cached or off, not {mode!r}") from e
    if "allow_certificate_hold" in revocation:
        kwargs["allow_certificate_hold"] = _typed(revocation["allow_certificate_hold"], bool, "allow_certificate_hold")
    rim = _table(doc, "rim")
    if "missing" in rim:
        missing = _typed(rim["missing"], str, "rim.missing")
        if missing not in ("fail", "report"):
            raise PolicyError(f"rim.missing must be fail or report, not {missing!r}")
        kwargs["missing_rim_fails"] = missing == "fail"
    return Policy(**kwargs)


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"cannot read policy {path}: {e}") from e
    return parse_policy(text)
