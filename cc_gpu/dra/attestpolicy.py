"""The policy actually applied to one request: the class's, raised to the node's floor, tightened by the claim.

The node admin owns the policy. Three layers speak about the same knobs: the DeviceClass config (the admin's, in
the cluster), the node-wide minimum in the plugin's settings (the admin's, on the node) and the claim config (the
tenant's). They are combined with the one order per knob in `attest/strictness.py`:

- the class's values are raised to the node minimum (the stricter wins, silently: both are the admin's);
- a claim value weaker than that result is refused with a claim error naming the knob (a tenant must not believe
  it got a setting it did not get); an equal or stricter value is applied;
- policies are never replaced, only added: the class's (or `strict`), the node minimum's, and the claim's named or
  inline policy when the node's `claim_policies` allows that kind; all must pass (their field-wise combination).

The result records every source and every knob, so the claim status and the token say what was applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cc_gpu.attest import strictness
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.strictness import Knob
from cc_gpu.dra.attestcfg import AttestationRequest, AttestationSettings, InlinePolicy
from cc_gpu.dra.errors import ClaimError

WHERE = "attestation"


class PolicyWeakenedError(ClaimError):
    """A claim asked for a weaker value of a knob than the admin's class and node policy; the message names it."""

    reason = "policy"


@dataclass(frozen=True)
class AppliedPolicy:
    required: bool
    policy: Policy
    when_bound_to_vfio: str
    sources: tuple[str, ...]  # "class:strict", "node:fleet", "claim:inline"
    evidence: str = "host"  # host (pre-flight at prepare) | guest (from inside the VM, via the service)

    @property
    def label(self) -> str:
        return "+".join(self.sources)

    def describe(self) -> dict[str, Any]:
        return {"policies": list(self.sources), "required": self.required, "evidence": self.evidence,
                "whenBoundToVfio": self.when_bound_to_vfio, **self.policy.describe()}


def _inline_values(policy: Policy) -> dict[str, object]:
    return {"minDriverVersion": policy.min_driver, "minVbiosVersion": policy.min_vbios,
            "missingRim": "fail" if policy.missing_rim_fails else "report",
            "allowCertificateHold": policy.allow_certificate_hold}


def _refuse_weaker(knob: Knob, where: str, asked: object, admin: object) -> None:
    if knob.weaker(asked, admin):
        raise PolicyWeakenedError(
            f"{where}: the claim asks for {asked!r}, weaker than the {admin!r} its DeviceClass and node require "
            f"(stricter is: {knob.stricter_is}); a claim may only tighten attestation policy"
        )


def _with_knobs(policy: Policy, age: float | None, revocation: str | None) -> Policy:
    if age is not None:
        policy = replace(policy, max_evidence_age_s=float(age))
    if revocation is not None:
        policy = policy.with_revocation(RevocationMode(revocation))
    return policy


def _floor(policy: Policy, age: float | None, revocation: str | None) -> Policy:
    """Raise `policy` to a minimum age and revocation mode (never lowers it)."""
    if age is not None:
        policy = replace(policy, max_evidence_age_s=float(
            strictness.MAX_EVIDENCE_AGE.stricter(policy.max_evidence_age_s, float(age))))  # type: ignore[arg-type]
    if revocation is not None:
        policy = policy.with_revocation(RevocationMode(str(
            strictness.REVOCATION.stricter(policy.revocation.value, revocation))))
    return policy


def applied_policy(
    req: AttestationRequest, settings: AttestationSettings, policies: Mapping[str, Policy], node: str
) -> AppliedPolicy:
    """Combine the class layer, the node minimum and the claim layer; a `ClaimError` names a weakened knob."""

    def named(name: str, where: str) -> Policy:
        if name not in policies:
            raise ClaimError(f"{where}: attestation policy {name!r} is not configured on node {node} "
                             f"(known: {', '.join(sorted(policies))})")
        return policies[name]

    minimum = settings.minimum
    # The class's own layer: its named or inline policy (strict by default), with its own knobs.
    if req.inline is not None:
        policy, sources = req.inline.to_policy(), ["class:inline"]
    else:
        policy, sources = named(req.policy or "strict", f"{WHERE}.policy"), [f"class:{req.policy or 'strict'}"]
    policy = _with_knobs(policy, req.max_evidence_age_s, req.revocation)
    # The node minimum raises it.
    if minimum.policy is not None:
        policy = policy.combine(named(minimum.policy, "attestation.minimum.policy"))
        sources.append(f"node:{minimum.policy}")
    policy = _floor(policy, minimum.max_evidence_age_s, minimum.revocation)
    when = str(strictness.WHEN_BOUND_TO_VFIO.stricter(req.when_bound_to_vfio or "useDiscoveryEvidence",
                                                       minimum.when_bound_to_vfio or "useDiscoveryEvidence"))
    required = req.required or minimum.required
    evidence = str(strictness.EVIDENCE.stricter(req.evidence or "host", minimum.evidence or "host"))
    # The claim may only tighten.
    claim = req.claim
    if claim.revocation is not None:
        _refuse_weaker(strictness.REVOCATION, f"{WHERE}.revocation", claim.revocation, policy.revocation.value)
    if claim.max_evidence_age_s is not None:
        _refuse_weaker(strictness.MAX_EVIDENCE_AGE, f"{WHERE}.maxEvidenceAgeSeconds", claim.max_evidence_age_s,
                       policy.max_evidence_age_s)
    if claim.when_bound_to_vfio is not None:
        _refuse_weaker(strictness.WHEN_BOUND_TO_VFIO, f"{WHERE}.whenBoundToVfio", claim.when_bound_to_vfio, when)
        when = claim.when_bound_to_vfio
    if claim.evidence is not None:
        _refuse_weaker(strictness.EVIDENCE, f"{WHERE}.evidence", claim.evidence, evidence)
        evidence = claim.evidence
    if claim.policy is not None:
        if "named" not in settings.claim_policies:
            raise ClaimError(f"{WHERE}.policy: node {node} does not let claims add named policies "
                             "(the admin's attestation.claim_policies); the DeviceClass picks the policy")
        policy = policy.combine(named(claim.policy, f"{WHERE}.policy"))
        sources.append(f"claim:{claim.policy}")
    if claim.inline is not None:
        if "inline" not in settings.claim_policies:
            raise ClaimError(f"{WHERE}.inlinePolicy: node {node} does not let claims add inline policies "
                             "(the admin's attestation.claim_policies)")
        _refuse_weaker_inline(claim.inline, policy)
        policy = policy.combine(claim.inline.to_policy())
        sources.append("claim:inline")
    # The claim's own knobs last: each was checked to be at least as strict as what it replaces.
    policy = _floor(policy, claim.max_evidence_age_s, claim.revocation)
    return AppliedPolicy(required, policy, when, tuple(sources), evidence)


def _refuse_weaker_inline(inline: InlinePolicy, admin: Policy) -> None:
    current = _inline_values(admin)
    for knob_name, asked in inline.given().items():
        _refuse_weaker(strictness.KNOBS[knob_name], f"{WHERE}.inlinePolicy.{knob_name}", asked, current[knob_name])
