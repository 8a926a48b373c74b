"""The `attestation` section of claim/class parameters and the node's `[attestation]` table: strict, field-named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cc_gpu.dra import attestcfg, opaque
from cc_gpu.dra.attestcfg import AttestationRequest, AttestationSettings, ClaimLayer, InlinePolicy, decode_settings
from cc_gpu.dra.attestresult import semver_of_driver, token_env_name
from cc_gpu.dra.errors import OpaqueConfigError
from cc_gpu.dra.settings import PluginSettings, apply_mapping
from cc_gpu.errors import ConfigError

DRIVER = "gpu.cc-gpu.io"


def params(**section: Any) -> dict[str, Any]:
    return {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", "attestation": section}


def entry(source: str, parameters: Any) -> opaque.ConfigEntry:
    return opaque.ConfigEntry(source, (), parameters)


@pytest.mark.parametrize(
    ("name", "entries", "want"),
    [
        ("no section: not required", [], AttestationRequest()),
        ("class requires", [entry("FromClass", params(required=True))], AttestationRequest(required=True)),
        (
            "a claim's named policy is kept apart from the class's",
            [entry("FromClass", params(required=True)), entry("FromClaim", params(policy="lenient"))],
            AttestationRequest(required=True, claim=ClaimLayer(policy="lenient")),
        ),
        (
            "a claim's inline policy does not replace the class's named one",
            [entry("FromClass", params(policy="strict")),
             entry("FromClaim", params(inlinePolicy={"minDriverVersion": "550.90.07", "missingRim": "report"}))],
            AttestationRequest(policy="strict",
                               claim=ClaimLayer(inline=InlinePolicy(min_driver="550.90.07", missing_rim="report"))),
        ),
        (
            "later class entries override earlier ones (both are the admin's)",
            [entry("FromClass", params(policy="strict", revocation="online")),
             entry("FromClass", params(inlinePolicy={"missingRim": "report"}, revocation="cached"))],
            AttestationRequest(inline=InlinePolicy(missing_rim="report"), revocation="cached"),
        ),
        (
            "every field of a claim",
            [entry("FromClaim", params(required=True, maxEvidenceAgeSeconds=60, revocation="cached",
                                       whenBoundToVfio="refuse"))],
            AttestationRequest(required=True, claim=ClaimLayer(max_evidence_age_s=60, revocation="cached",
                                                               when_bound_to_vfio="refuse")),
        ),
    ],
)
def test_section_decodes(name: str, entries: list[opaque.ConfigEntry], want: AttestationRequest) -> None:
    cfg = opaque.resolve(entries, "gpu")
    assert attestcfg.request_of(cfg.extra) == want, name


@pytest.mark.parametrize(
    ("name", "entries", "message"),
    [
        ("unknown field", [entry("FromClaim", params(requird=True))], "attestation.requird: unknown field"),
        ("not an object", [entry("FromClaim", {**params(), "attestation": "yes"})], "attestation: must be an object"),
        ("required not a bool", [entry("FromClaim", params(required="true"))],
         "attestation.required: must be a boolean"),
        ("claim lowers the class",
         [entry("FromClass", params(required=True)), entry("FromClaim", params(required=False))],
         "cannot be lowered"),
        ("both policies", [entry("FromClaim", params(policy="strict", inlinePolicy={}))], "not both"),
        ("empty policy name", [entry("FromClaim", params(policy=""))], "attestation.policy"),
        ("age zero", [entry("FromClaim", params(maxEvidenceAgeSeconds=0))], "attestation.maxEvidenceAgeSeconds"),
        ("age a bool", [entry("FromClaim", params(maxEvidenceAgeSeconds=True))], "maxEvidenceAgeSeconds"),
        ("revocation mode", [entry("FromClaim", params(revocation="sometimes"))],
         "attestation.revocation: must be one of"),
        ("vfio mode", [entry("FromClaim", params(whenBoundToVfio="hope"))], "attestation.whenBoundToVfio"),
        ("inline unknown", [entry("FromClaim", params(inlinePolicy={"minDriver": "1"}))],
         "attestation.inlinePolicy.minDriver: unknown field"),
        ("inline bad driver", [entry("FromClaim", params(inlinePolicy={"minDriverVersion": "r550"}))],
         "inlinePolicy.minDriverVersion: must be a driver version"),
        ("inline bad vbios", [entry("FromClaim", params(inlinePolicy={"minVbiosVersion": "96.0X"}))],
         "inlinePolicy.minVbiosVersion"),
        ("inline missingRim", [entry("FromClaim", params(inlinePolicy={"missingRim": "ignore"}))],
         "inlinePolicy.missingRim"),
    ],
)
def test_section_errors_name_the_field(name: str, entries: list[opaque.ConfigEntry], message: str) -> None:
    with pytest.raises(OpaqueConfigError) as e:
        opaque.resolve(entries, "gpu")
    assert message in str(e.value), name


def test_node_settings_table(tmp_path: Path) -> None:
    s = apply_mapping(PluginSettings(), {"attestation": {
        "provider": "directory", "evidence_dir": str(tmp_path), "allow_rebind": True, "token_ttl_seconds": 60,
        "policies": {"fleet": str(tmp_path / "fleet.toml")},
    }})
    assert s.attestation.provider == "directory" and s.attestation.evidence_dir == tmp_path
    assert s.attestation.allow_rebind and s.attestation.token_ttl_seconds == 60
    assert s.attestation.policies == {"fleet": tmp_path / "fleet.toml"}


@pytest.mark.parametrize(
    ("name", "table", "message"),
    [
        ("unknown key", {"allow_rebound": True}, "attestation.allow_rebound: unknown"),
        ("wrong type", {"allow_rebind": "yes"}, "attestation.allow_rebind: must be bool"),
        ("int as bool", {"token_ttl_seconds": True}, "attestation.token_ttl_seconds"),
        ("unknown provider", {"provider": "magic"}, "attestation.provider"),
        ("directory without a directory", {"provider": "directory"}, "attestation.evidence_dir"),
        ("zero ttl", {"token_ttl_seconds": 0}, "at least 1"),
        ("policies not paths", {"policies": {"x": 1}}, "attestation.policies"),
        ("minimum unknown key", {"minimum": {"revoke": "online"}}, "attestation.minimum.revoke: unknown"),
        ("minimum revocation", {"minimum": {"revocation": "never"}}, "attestation.minimum.revocation"),
        ("minimum age", {"minimum": {"max_evidence_age_seconds": 0}}, "max_evidence_age_seconds"),
        ("minimum unknown policy", {"minimum": {"policy": "fleet"}}, "'fleet' is not a configured policy"),
        ("claim policy kinds", {"claim_policies": ["any"]}, "attestation.claim_policies"),
        ("negative OCSP bound", {"ocsp_online_cache_seconds": -1}, "must not be negative"),
    ],
)
def test_node_settings_errors(name: str, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        decode_settings(table, AttestationSettings())
    assert message in str(e.value), name


@pytest.mark.parametrize(
    ("version", "want"),
    [("550.90.07", "550.90.7"), ("545.00", "545.0.0"), ("535", "535.0.0"), ("r550", None), ("1.2.3.4", None),
     (None, None)],
)
def test_driver_version_as_semver(version: str | None, want: str | None) -> None:
    assert semver_of_driver(version) == want


def test_token_env_name() -> None:
    assert token_env_name("0000:18:00.0") == "CC_GPU_ATTESTATION_TOKEN_0000_18_00_0"
