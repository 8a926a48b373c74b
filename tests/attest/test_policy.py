"""Policy files: strict decoding, a strict default, and clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cc_gpu.attest import policy as P
from cc_gpu.attest.errors import PolicyError
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.policy import Policy, load_policy, parse_policy


def test_default_policy_is_strict() -> None:
    policy = Policy()
    assert policy.required_checks == frozenset(P.ALL_CHECKS)
    assert policy.revocation is RevocationMode.ONLINE
    assert not policy.allow_certificate_hold
    assert policy.missing_rim_fails
    assert policy.max_evidence_age_s == 300


def test_full_policy_file() -> None:
    policy = parse_policy(
        """
        required_checks = ["measres", "x-nvidia-gpu-attestation-report-nonce-match"]
        [versions]
        min_driver = "550.54.14"
        min_vbios = "96.00.5E.00.01"
        [evidence]
        max_age_seconds = 60
        [revocation]
        mode = "cached"
        allow_certificate_hold = true
        [rim]
        missing = "report"
        """
    )
    assert policy == Policy(
        required_checks=frozenset({"measres", "x-nvidia-gpu-attestation-report-nonce-match"}),
        min_driver="550.54.14",
        min_vbios="96.00.5E.00.01",
        max_evidence_age_s=60.0,
        revocation=RevocationMode.CACHED,
        allow_certificate_hold=True,
        missing_rim_fails=False,
    )


@pytest.mark.parametrize(
    ("case", "text", "match"),
    [
        ("not-toml", "[versions", "not valid TOML"),
        ("unknown-top-level-key", "strict = false", "unknown top-level"),
        ("unknown-table-key", "[revocation]\nmod = 'off'", r"unknown keys in \[revocation\]"),
        ("bad-mode", "[revocation]\nmode = 'sometimes'", "online, cached or off"),
        ("bad-missing", "[rim]\nmissing = 'ignore'", "fail or report"),
        ("unknown-check", "required_checks = ['measres', 'x-made-up']", "unknown check names"),
        ("bad-driver-version", "[versions]\nmin_driver = 'five'", "not a driver version"),
        ("bad-vbios-version", "[versions]\nmin_vbios = '96.zz'", "not a VBIOS version"),
        ("negative-age", "[evidence]\nmax_age_seconds = -1", "positive"),
        ("bool-as-age", "[evidence]\nmax_age_seconds = true", "wrong type"),
        ("string-as-hold", "[revocation]\nallow_certificate_hold = 'yes'", "wrong type"),
        ("table-not-table", "versions = 3", "must be a table"),
    ],
)
def test_invalid_policies(case: str, text: str, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        parse_policy(text)


def test_load_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    (tmp_path / "p.toml").write_text("[rim]\nmissing = 'report'\n")
    assert not load_policy(tmp_path / "p.toml").missing_rim_fails


@pytest.mark.parametrize(
    ("low", "high", "key"),
    [
        ("550.54.14", "550.90.07", P.driver_version_key),
        ("545.00", "550.00", P.driver_version_key),
        ("96.00.5E.00.01", "96.00.9F.00.01", P.vbios_version_key),
        ("96.00.9F.00.01", "96.00.A0.00.00", P.vbios_version_key),
    ],
)
def test_version_ordering(low: str, high: str, key) -> None:  # type: ignore[no-untyped-def]
    assert key(low) < key(high)
