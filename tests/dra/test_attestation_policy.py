"""The admin owns the policy: every knob a claim can set, weaker (refused, naming the knob), equal and stricter.

One table row per knob and direction, over the order written once in `attest/strictness.py`. The class's values
sit in the middle of each order so both directions exist; named and inline policies are added, never swapped in.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from cc_gpu.attest import strictness
from cc_gpu.attest.policy import Policy
from cc_gpu.dra import attestcfg, opaque
from cc_gpu.dra.attestcfg import AttestationSettings, NodeMinimum
from cc_gpu.dra.attestpolicy import PolicyWeakenedError, applied_policy
from cc_gpu.dra.errors import ClaimError, OpaqueConfigError

ALLOW_ALL = AttestationSettings(claim_policies=("named", "inline"))
POLICIES = {"strict": Policy(), "lenient": Policy(missing_rim_fails=False), "fleet": Policy(min_driver="550.0")}


def _params(section: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", "attestation": section}


def applied(cls: dict[str, Any], claim: dict[str, Any] | None, settings: AttestationSettings = ALLOW_ALL
            ) -> dict[str, Any]:
    entries = [opaque.ConfigEntry("FromClass", (), _params(cls))]
    if claim is not None:
        entries.append(opaque.ConfigEntry("FromClaim", (), _params(claim)))
    req = attestcfg.request_of(opaque.resolve(entries, "gpu").extra)
    return applied_policy(req, settings, POLICIES, "node-a").describe()


# (knob, class section, weaker claim, equal claim, stricter claim, key in describe(), stricter value applied)
SECTION_KNOBS: list[tuple[str, dict[str, Any], Any, Any, Any, str, Any]] = [
    ("revocation", {"revocation": "cached"}, "off", "cached", "online", "revocation", "online"),
    ("maxEvidenceAgeSeconds", {"maxEvidenceAgeSeconds": 300}, 604800, 300, 60, "maxEvidenceAgeSeconds", 60.0),
    ("whenBoundToVfio", {"whenBoundToVfio": "rebind"}, "useDiscoveryEvidence", "rebind", "refuse",
     "whenBoundToVfio", "refuse"),
]
# Knobs with two values: the class at the weaker one (a claim may tighten) and at the stricter one (it may not loosen).
TWO_VALUE_KNOBS: list[tuple[str, str, str]] = [("evidence", "host", "guest")]
INLINE_KNOBS: list[tuple[str, dict[str, Any], Any, Any, Any, Any]] = [
    ("minDriverVersion", {"minDriverVersion": "550.90.07"}, "545.00", "550.90.07", "560.35.03", "560.35.03"),
    ("minVbiosVersion", {"minVbiosVersion": "96.00.5E.00.01"}, "96.00.30.00.01", "96.00.5E.00.01", "96.00.9F.00.01",
     "96.00.9F.00.01"),
    ("missingRim", {"missingRim": "report"}, None, "report", "fail", "fail"),
    ("missingRim", {"missingRim": "fail"}, "report", "fail", None, "fail"),
    ("allowCertificateHold", {"allowCertificateHold": True}, None, True, False, False),
    ("allowCertificateHold", {"allowCertificateHold": False}, True, False, None, False),
]


def test_every_knob_has_an_order() -> None:
    configurable = {"required", "revocation", "maxEvidenceAgeSeconds", "whenBoundToVfio", "evidence"} | {
        k for k, *_ in INLINE_KNOBS}
    assert configurable <= set(strictness.KNOBS)
    assert ({k for k, *_ in SECTION_KNOBS} | {k for k, *_ in INLINE_KNOBS} | {k for k, *_ in TWO_VALUE_KNOBS}
            | {"required"}) == configurable


@pytest.mark.parametrize(("knob", "weak", "strong"), TWO_VALUE_KNOBS, ids=[k[0] for k in TWO_VALUE_KNOBS])
def test_two_value_knob(knob: str, weak: str, strong: str) -> None:
    # The class at the stricter value: the claim may repeat it but never loosen it (guest attestation stays on).
    with pytest.raises(PolicyWeakenedError) as e:
        applied({"required": True, knob: strong}, {knob: weak})
    assert f"attestation.{knob}" in str(e.value) and "only tighten" in str(e.value)
    assert applied({"required": True, knob: strong}, {knob: strong}) == applied({"required": True, knob: strong}, None)
    # The class at the weaker value: equal changes nothing, stricter is applied.
    assert applied({"required": True, knob: weak}, {knob: weak})[knob] == weak
    assert applied({"required": True, knob: weak}, {knob: strong})[knob] == strong
    # The node floor raises the class silently (both are the admin's) and binds the claim.
    floor = replace(ALLOW_ALL, minimum=NodeMinimum(**{knob: strong}))
    assert applied({"required": True, knob: weak}, None, floor)[knob] == strong
    with pytest.raises(PolicyWeakenedError):
        applied({"required": True}, {knob: weak}, floor)


@pytest.mark.parametrize(("knob", "cls", "weaker", "equal", "stricter", "key", "result"), SECTION_KNOBS,
                         ids=[k[0] for k in SECTION_KNOBS])
def test_section_knob(knob: str, cls: dict[str, Any], weaker: Any, equal: Any, stricter: Any, key: str,
                      result: Any) -> None:
    base = {"required": True, **cls}
    with pytest.raises(PolicyWeakenedError) as e:
        applied(base, {knob: weaker})
    assert f"attestation.{knob}" in str(e.value) and "only tighten" in str(e.value)
    assert applied(base, {knob: equal}) == applied(base, None)
    assert applied(base, {knob: stricter})[key] == result


@pytest.mark.parametrize(("knob", "cls", "weaker", "equal", "stricter", "result"), INLINE_KNOBS,
                         ids=[f"{k[0]}-{k[1][k[0]]}" for k in INLINE_KNOBS])
def test_inline_knob(knob: str, cls: dict[str, Any], weaker: Any, equal: Any, stricter: Any, result: Any) -> None:
    base = {"required": True, "inlinePolicy": cls}
    if weaker is not None:
        with pytest.raises(PolicyWeakenedError) as e:
            applied(base, {"inlinePolicy": {knob: weaker}})
        assert f"attestation.inlinePolicy.{knob}" in str(e.value)
    got = applied(base, {"inlinePolicy": {knob: equal}})
    assert got[knob] == applied(base, None)[knob]
    assert got["policies"] == ["class:inline", "claim:inline"]
    if stricter is not None:
        assert applied(base, {"inlinePolicy": {knob: stricter}})[knob] == result


def test_required() -> None:
    with pytest.raises(OpaqueConfigError, match=r"attestation\.required"):
        applied({"required": True}, {"required": False})
    assert applied({"required": True}, {"required": True})["required"] is True
    assert applied({"required": False}, {"required": True})["required"] is True


@pytest.mark.parametrize(
    ("name", "cls", "claim", "want"),
    [
        ("a weaker named policy is added, not swapped in", {"policy": "strict"}, {"policy": "lenient"},
         {"missingRim": "fail", "policies": ["class:strict", "claim:lenient"]}),
        ("a stricter named policy tightens", {"policy": "lenient"}, {"policy": "strict"},
         {"missingRim": "fail", "policies": ["class:lenient", "claim:strict"]}),
        ("both minimums hold", {"inlinePolicy": {"minVbiosVersion": "96.00.5E.00.01"}}, {"policy": "fleet"},
         {"minDriverVersion": "550.0", "minVbiosVersion": "96.00.5E.00.01"}),
    ],
)
def test_named_policies_are_applied_in_addition(name: str, cls: dict[str, Any], claim: dict[str, Any],
                                                want: dict[str, Any]) -> None:
    got = applied(cls, claim)
    assert {k: got[k] for k in want} == want, name


@pytest.mark.parametrize(
    ("claim", "allowed", "message"),
    [
        ({"policy": "strict"}, ("inline",), "attestation.policy: node node-a does not let claims add named"),
        ({"inlinePolicy": {"missingRim": "fail"}}, ("named",), "attestation.inlinePolicy: node node-a does not"),
        ({"policy": "nope"}, ("named",), "'nope' is not configured"),
    ],
)
def test_claim_policies_only_where_the_admin_allows(claim: dict[str, Any], allowed: tuple[str, ...],
                                                   message: str) -> None:
    with pytest.raises(ClaimError, match=message):
        applied({"required": True}, claim, AttestationSettings(claim_policies=allowed))


def test_node_minimum_is_the_floor() -> None:
    floor = replace(ALLOW_ALL, minimum=NodeMinimum(required=True, policy="fleet", revocation="online",
                                                  max_evidence_age_s=60, when_bound_to_vfio="refuse"))
    got = applied({"policy": "lenient", "revocation": "off", "maxEvidenceAgeSeconds": 3600}, None, floor)
    assert got == {**got, "required": True, "revocation": "online", "maxEvidenceAgeSeconds": 60.0,
                   "whenBoundToVfio": "refuse", "minDriverVersion": "550.0", "evidence": "host",
                   "policies": ["class:lenient", "node:fleet"]}
    for knob, value in (("revocation", "cached"), ("maxEvidenceAgeSeconds", 600), ("whenBoundToVfio", "rebind")):
        with pytest.raises(PolicyWeakenedError, match=rf"attestation\.{knob}"):
            applied({}, {knob: value}, floor)
    # A class stricter than the floor stays stricter.
    assert applied({"maxEvidenceAgeSeconds": 10}, None, floor)["maxEvidenceAgeSeconds"] == 10.0


@pytest.mark.parametrize("knob", sorted(strictness.KNOBS))
def test_stricter_is_an_order(knob: str) -> None:
    k = strictness.KNOBS[knob]
    samples: dict[str, list[Any]] = {
        "maxEvidenceAgeSeconds": [None, 600, 60], "minDriverVersion": [None, "545.00", "550.90.07"],
        "minVbiosVersion": [None, "96.00.5E.00.01", "96.00.9F.00.01"],
        "requiredChecks": [frozenset(), frozenset({"a"}), frozenset({"a", "b"})],
    }
    values = list(k.order) or samples[knob]
    for weak, strong in itertools.pairwise(values):
        assert k.weaker(weak, strong) and not k.weaker(strong, weak) and not k.weaker(weak, weak)
        assert k.stricter(weak, strong) == strong == k.stricter(strong, weak)
