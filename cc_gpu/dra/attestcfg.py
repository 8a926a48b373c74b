"""Attestation configuration: the `attestation` section of claim/class parameters and the node's `[attestation]` table.

Two audiences, two places. Claim authors and DeviceClass admins say *whether* a GPU must be attested and against
*which* policy, in the `attestation` section of `VfioDeviceConfig` (decoded strictly here and registered as a
section of `opaque.SECTIONS`). The node admin says *how*: which evidence provider, which trust store, RIM and OCSP
stores, which named policies exist, key rotation and token lifetime, in the plugin's `[attestation]` TOML table.

The claim section is fail-closed across entries: class entries apply first and claim entries after, and a later
entry may not switch `required` off once an earlier one (the attested DeviceClass) switched it on.

    attestation:
      required: true                  # default false
      policy: strict                  # a named policy of the node's config (built in: strict, lenient)
      inlinePolicy:                   # or a policy inline (exclusive with `policy`)
        minDriverVersion: "550.90.07"
        minVbiosVersion: "96.00.9F.00.01"
        missingRim: fail              # fail | report
        allowCertificateHold: false
      maxEvidenceAgeSeconds: 300
      revocation: online              # online | cached | off
      whenBoundToVfio: useDiscoveryEvidence   # useDiscoveryEvidence | refuse | rebind
      evidence: host                  # host (pre-flight, CC off/devtools) | guest (from inside the VM)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cc_gpu.dra.errors import OpaqueConfigError
from cc_gpu.errors import ConfigError

if TYPE_CHECKING:
    from cc_gpu.attest.policy import Policy

SECTION = "attestation"
REVOCATION_MODES = ("online", "cached", "off")
WHEN_ON_VFIO = ("useDiscoveryEvidence", "refuse", "rebind")
MISSING_RIM = ("fail", "report")
EVIDENCE = ("host", "guest")
PROVIDERS = ("auto", "nvml", "directory", "simulated", "none")
BUILTIN_POLICIES = ("strict", "lenient")
MAX_AGE_LIMIT_S = 7 * 24 * 3600


@dataclass(frozen=True)
class InlinePolicy:
    """The policy knobs a config may set inline; a knob left out (None) stays at the strict default."""

    min_driver: str | None = None
    min_vbios: str | None = None
    missing_rim: str | None = None
    allow_certificate_hold: bool | None = None

    def to_policy(self) -> Policy:
        # Imported here: the plugin's settings (and the real-kernel guest, which has no `cryptography`) read this
        # module without verifying anything.
        from cc_gpu.attest.policy import Policy  # noqa: PLC0415

        return Policy(min_driver=self.min_driver, min_vbios=self.min_vbios,
                      missing_rim_fails=(self.missing_rim or "fail") == "fail",
                      allow_certificate_hold=bool(self.allow_certificate_hold))

    def given(self) -> dict[str, object]:
        """The knobs this inline policy sets, by their config names (`strictness.KNOBS` keys)."""
        values = {"minDriverVersion": self.min_driver, "minVbiosVersion": self.min_vbios,
                  "missingRim": self.missing_rim, "allowCertificateHold": self.allow_certificate_hold}
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class ClaimLayer:
    """What the claim's own config entries asked for; combined with the admin's layers by `dra/attestpolicy.py`."""

    policy: str | None = None
    inline: InlinePolicy | None = None
    max_evidence_age_s: int | None = None
    revocation: str | None = None
    when_bound_to_vfio: str | None = None
    evidence: str | None = None


@dataclass(frozen=True)
class AttestationRequest:
    """The decoded `attestation` sections of one request: the class's (admin's) layer and the claim's layer.

    The top-level fields are the DeviceClass config's values (entries of the class, later wins); `claim` holds what
    the claim's entries asked for. They are never merged here by "later wins": the claim layer may only tighten,
    and that is decided with the node's policies at hand (`dra/attestpolicy.py`). `required` is the exception: it
    only ever goes up, so it is merged here.
    """

    required: bool = False
    policy: str | None = None  # a named policy; None with no inline policy means "strict"
    inline: InlinePolicy | None = None
    max_evidence_age_s: int | None = None  # None: the policy's own
    revocation: str | None = None  # None: the policy's own
    when_bound_to_vfio: str | None = None  # None: useDiscoveryEvidence (if the node allows such evidence at all)
    evidence: str | None = None  # None: host
    claim: ClaimLayer = field(default_factory=ClaimLayer)


def _field_errors(where: str, raw: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise OpaqueConfigError(f"{where}.{unknown[0]}: unknown field")


def _bool(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise OpaqueConfigError(f"{where}: must be a boolean (got {value!r})")
    return value


def _choice(where: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise OpaqueConfigError(f"{where}: must be one of {', '.join(allowed)} (got {value!r})")
    return value


def _version(where: str, value: object, hex_parts: bool) -> str:
    base = 16 if hex_parts else 10
    try:
        if not isinstance(value, str) or not value or not all(int(p, base) >= 0 for p in value.split(".")):
            raise ValueError(value)
    except ValueError:
        kind = "VBIOS version such as 96.00.9F.00.01" if hex_parts else "driver version such as 550.90.07"
        raise OpaqueConfigError(f"{where}: must be a {kind} (got {value!r})") from None
    return value


_INLINE_FIELDS = frozenset({"minDriverVersion", "minVbiosVersion", "missingRim", "allowCertificateHold"})
_FIELDS = frozenset(
    {"required", "policy", "inlinePolicy", "maxEvidenceAgeSeconds", "revocation", "whenBoundToVfio", "evidence"}
)


def _inline(where: str, raw: object) -> InlinePolicy:
    if not isinstance(raw, Mapping):
        raise OpaqueConfigError(f"{where}: must be an object (got {type(raw).__name__})")
    _field_errors(where, raw, _INLINE_FIELDS)
    out = InlinePolicy()
    if "minDriverVersion" in raw:
        out = replace(out, min_driver=_version(f"{where}.minDriverVersion", raw["minDriverVersion"], False))
    if "minVbiosVersion" in raw:
        out = replace(out, min_vbios=_version(f"{where}.minVbiosVersion", raw["minVbiosVersion"], True))
    if "missingRim" in raw:
        out = replace(out, missing_rim=_choice(f"{where}.missingRim", raw["missingRim"], MISSING_RIM))
    if "allowCertificateHold" in raw:
        out = replace(out, allow_certificate_hold=_bool(f"{where}.allowCertificateHold", raw["allowCertificateHold"]))
    return out


def _layer_values(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The knobs one entry sets (besides `required`), decoded, by dataclass field name."""
    out: dict[str, Any] = {}
    if "policy" in raw and "inlinePolicy" in raw:
        raise OpaqueConfigError(f"{where}.inlinePolicy: give either policy or inlinePolicy, not both")
    if "policy" in raw:
        name = raw["policy"]
        if not isinstance(name, str) or not name or len(name) > 63:
            raise OpaqueConfigError(f"{where}.policy: must be a policy name of 1-63 characters (got {name!r})")
        out.update(policy=name, inline=None)
    if "inlinePolicy" in raw:
        out.update(inline=_inline(f"{where}.inlinePolicy", raw["inlinePolicy"]), policy=None)
    if "maxEvidenceAgeSeconds" in raw:
        age = raw["maxEvidenceAgeSeconds"]
        if not isinstance(age, int) or isinstance(age, bool) or not 1 <= age <= MAX_AGE_LIMIT_S:
            raise OpaqueConfigError(
                f"{where}.maxEvidenceAgeSeconds: must be an integer from 1 to {MAX_AGE_LIMIT_S} (got {age!r})"
            )
        out["max_evidence_age_s"] = age
    if "revocation" in raw:
        out["revocation"] = _choice(f"{where}.revocation", raw["revocation"], REVOCATION_MODES)
    if "whenBoundToVfio" in raw:
        out["when_bound_to_vfio"] = _choice(f"{where}.whenBoundToVfio", raw["whenBoundToVfio"], WHEN_ON_VFIO)
    if "evidence" in raw:
        out["evidence"] = _choice(f"{where}.evidence", raw["evidence"], EVIDENCE)
    return out


def decode_section(
    previous: AttestationRequest | None, raw: object, where: str, source: str = "FromClass"
) -> AttestationRequest:
    """Decode one `attestation` object over the value earlier entries produced (the `opaque.SECTIONS` contract).

    Class entries fill the admin's layer (later class entries override earlier ones); claim entries fill the claim's
    layer, which is only ever combined with the admin's by taking the stricter value.
    """
    if not isinstance(raw, Mapping):
        raise OpaqueConfigError(f"{where}: must be an object (got {type(raw).__name__})")
    _field_errors(where, raw, _FIELDS)
    base = previous or AttestationRequest()
    out = base
    if "required" in raw:
        required = _bool(f"{where}.required", raw["required"])
        if base.required and not required:
            raise OpaqueConfigError(
                f"{where}.required: an earlier configuration requires attestation; it cannot be lowered"
            )
        out = replace(out, required=required)
    values = _layer_values(raw, where)
    if source == "FromClaim":
        return replace(out, claim=replace(out.claim, **values))
    return replace(out, **values)


def request_of(extra: Mapping[str, Any]) -> AttestationRequest:
    """The decoded section from a `VfioDeviceConfig.extra`, or the default (not required)."""
    value = extra.get(SECTION)
    return value if isinstance(value, AttestationRequest) else AttestationRequest()


# ---- the node admin's `[attestation]` table ------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeMinimum:
    """The node admin's floor (`[attestation.minimum]`): every attested request is at least this strict.

    `policy` names a policy that is applied in addition to the class's and the claim's; `plain_vfio` makes every
    request of this driver attested at this floor, including those of the plain VFIO class (no `attestation` section).
    """

    required: bool = False
    policy: str | None = None
    revocation: str | None = None
    max_evidence_age_s: int | None = None
    when_bound_to_vfio: str | None = None
    evidence: str | None = None
    plain_vfio: bool = False


CLAIM_POLICY_KINDS = ("named", "inline")


@dataclass(frozen=True)
class AttestationSettings:
    provider: str = "auto"  # auto: simulated on a simulated node, else nvml
    evidence_dir: Path | None = None  # the directory provider's root
    trust_dir: Path | None = None  # device/*.pem and rim/*.pem; default: NVIDIA's roots shipped in the package
    rim_dir: Path | None = None
    rim_url: str = ""
    ocsp_dir: Path | None = None
    ocsp_online: bool = True  # may the plugin reach NVIDIA's OCSP responder (policy mode `online`)
    ocsp_online_cache_seconds: int = 300  # how long an answer from the responder stands in for asking again
    allow_foreign_nonce: bool = False  # accept evidence whose nonce this prepare did not choose (directory, discovery)
    discovery: bool = True  # attest at discovery and publish the result as device attributes
    discovery_policy: str = "strict"
    allow_rebind: bool = False  # may a claim ask for a temporary rebind of a vfio-bound GPU to nvidia
    token_mount: bool = False  # also mount a token file (0400, 0700 dir) read-only; env alone reaches a CC guest
    token_ttl_seconds: int = 3600
    key_max_age_days: int = 30
    keys_namespace: str = "cc-gpu-token-keys"
    keys_published: int = 3
    policies: Mapping[str, Path] = field(default_factory=dict)
    minimum: NodeMinimum = field(default_factory=NodeMinimum)
    claim_policies: tuple[str, ...] = ()  # which policies a claim may add to the class's: named, inline
    # The guest path: where the verification service is (given to the container), the CA that signs its HTTPS
    # certificate (PEM file, its contents given to the container), and how long a challenge may wait for evidence.
    service_url: str = ""
    service_ca: Path | None = None
    challenge_ttl_seconds: int = 900
    # Challenges the verification service accepts without a claim (an interop check with a client's fixed sample
    # nonce), as 64 hex digits; single use per service process. The plugin ignores them.
    interop_challenges: tuple[str, ...] = ()


_MINIMUM_TYPES: dict[str, tuple[str, type]] = {
    "required": ("required", bool), "policy": ("policy", str), "revocation": ("revocation", str),
    "max_evidence_age_seconds": ("max_evidence_age_s", int), "when_bound_to_vfio": ("when_bound_to_vfio", str),
    "plain_vfio": ("plain_vfio", bool), "evidence": ("evidence", str),
}


def _decode_minimum(value: object, base: NodeMinimum) -> NodeMinimum:
    if not isinstance(value, Mapping):
        raise ConfigError("config key attestation.minimum: must be a table")
    changes: dict[str, Any] = {}
    for key, v in value.items():
        if key not in _MINIMUM_TYPES:
            raise ConfigError(f"config key attestation.minimum.{key}: unknown")
        attr, want = _MINIMUM_TYPES[key]
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ConfigError(f"config key attestation.minimum.{key}: must be {want.__name__} (got {v!r})")
        changes[attr] = v
    out = replace(base, **changes)
    for attr, allowed in (("revocation", REVOCATION_MODES), ("when_bound_to_vfio", WHEN_ON_VFIO),
                          ("evidence", EVIDENCE)):
        if getattr(out, attr) is not None and getattr(out, attr) not in allowed:
            raise ConfigError(f"config key attestation.minimum.{attr}: must be one of {', '.join(allowed)}")
    if out.max_evidence_age_s is not None and not 1 <= out.max_evidence_age_s <= MAX_AGE_LIMIT_S:
        raise ConfigError(f"config key attestation.minimum.max_evidence_age_seconds: must be 1 to {MAX_AGE_LIMIT_S}")
    return out


_SETTING_PATHS = frozenset({"evidence_dir", "trust_dir", "rim_dir", "ocsp_dir", "service_ca"})
_SETTING_TYPES: dict[str, type] = {
    "provider": str, "rim_url": str, "ocsp_online": bool, "discovery": bool, "discovery_policy": str,
    "allow_rebind": bool, "token_mount": bool, "ocsp_online_cache_seconds": int, "allow_foreign_nonce": bool,
    "token_ttl_seconds": int, "key_max_age_days": int,
    "keys_namespace": str, "keys_published": int, "service_url": str, "challenge_ttl_seconds": int,
}


def decode_settings(value: object, base: AttestationSettings) -> AttestationSettings:
    """Decode the plugin config's `[attestation]` table strictly; a `ConfigError` names the key."""
    if not isinstance(value, Mapping):
        raise ConfigError("config key attestation: must be a table")
    changes: dict[str, Any] = {}
    for key, v in value.items():
        name = f"attestation.{key}"
        if key in _SETTING_PATHS:
            if not isinstance(v, str) or not v:
                raise ConfigError(f"config key {name}: must be a path (got {v!r})")
            changes[key] = Path(v)
        elif key in _SETTING_TYPES:
            want = _SETTING_TYPES[key]
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise ConfigError(f"config key {name}: must be {want.__name__} (got {v!r})")
            changes[key] = v
        elif key == "minimum":
            changes[key] = _decode_minimum(v, base.minimum)
        elif key == "claim_policies":
            if not isinstance(v, list) or not all(isinstance(k, str) and k in CLAIM_POLICY_KINDS for k in v):
                raise ConfigError(f"config key {name}: must be a list of {', '.join(CLAIM_POLICY_KINDS)}")
            changes[key] = tuple(v)
        elif key == "interop_challenges":
            if not isinstance(v, list) or not all(isinstance(h, str) and len(h) == 64
                                                  and all(c in "0123456789abcdefABCDEF" for c in h) for h in v):
                raise ConfigError(f"config key {name}: must be a list of 32-byte challenges as 64 hex digits")
            changes[key] = tuple(h.lower() for h in v)
        elif key == "policies":
            if not isinstance(v, Mapping) or not all(isinstance(p, str) and p for p in v.values()):
                raise ConfigError(f"config key {name}: must be a table of policy name = TOML file path")
            changes[key] = {str(k): Path(p) for k, p in v.items()}
        else:
            raise ConfigError(f"config key {name}: unknown")
    out = replace(base, **changes)
    known = set(BUILTIN_POLICIES) | set(out.policies)
    if out.minimum.policy is not None and out.minimum.policy not in known:
        raise ConfigError(f"config key attestation.minimum.policy: {out.minimum.policy!r} is not a configured policy")
    if out.provider not in PROVIDERS:
        raise ConfigError(f"config key attestation.provider: must be one of {', '.join(PROVIDERS)}")
    if out.provider == "directory" and out.evidence_dir is None:
        raise ConfigError("config key attestation.evidence_dir: required by the directory provider")
    if out.service_url and not out.service_url.startswith("https://"):
        raise ConfigError("config key attestation.service_url: must be an https:// URL (the challenge is a secret)")
    for key in ("token_ttl_seconds", "key_max_age_days", "keys_published", "challenge_ttl_seconds"):
        if getattr(out, key) < 1:
            raise ConfigError(f"config key attestation.{key}: must be at least 1")
    if out.ocsp_online_cache_seconds < 0:
        raise ConfigError("config key attestation.ocsp_online_cache_seconds: must not be negative")
    return out
