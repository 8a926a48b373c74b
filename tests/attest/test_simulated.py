"""Simulated evidence: good evidence passes the strict policy; every fault knob fails the check it should."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from cc_gpu.attest import policy as P
from cc_gpu.attest.ocsp import RevocationChecker
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.sim import Faults, SimulatedCa
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verifier import Verifier
from tests.attest.conftest import SIM_NOW

NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def ca() -> SimulatedCa:
    return SimulatedCa.create(SIM_NOW)


@pytest.fixture(scope="module")
def verifier(ca: SimulatedCa) -> Verifier:
    return Verifier(ca.trust_store(), revocation=RevocationChecker(transport=ca.ocsp_responder()))


def test_good_simulated_evidence_passes_the_strict_default_policy(ca: SimulatedCa, verifier: Verifier) -> None:
    gpu = ca.gpu("GPU-good")
    ev = gpu.evidence(NONCE)
    verdict = verifier.verify(
        ev.report, ev.cert_chain_pem, NONCE, Policy(), at=SIM_NOW, rims=[ev.driver_rim, ev.vbios_rim]
    )
    assert verdict.ok, verdict.failed
    assert verdict.identity.ueid == str(gpu.leaf.cert.serial_number)
    assert verdict.check(P.CHECK_FWID).status == "pass"
    assert verdict.revocation == {"device": "good", "driver-rim": "good", "vbios-rim": "good"}


FAULTS = [
    ("wrong-nonce", Faults(wrong_nonce=True), {P.CHECK_NONCE}),
    ("bad-signature", Faults(bad_signature=True), {P.CHECK_SIGNATURE}),
    ("tampered-measurement", Faults(tamper_measurement=3), {P.CHECK_MEASUREMENTS}),
    ("chain-missing-ica", Faults(drop_chain_cert=2), {P.CHECK_CHAIN}),
    ("chain-missing-brom", Faults(drop_chain_cert=1), {P.CHECK_CHAIN}),
    ("foreign-root", Faults(foreign_root=True), {P.CHECK_CHAIN}),
    ("leaf-swapped", Faults(swap_leaf=True), {P.CHECK_SIGNATURE, P.CHECK_FWID}),
    ("expired-device-cert", Faults(expired_device_cert=True), {P.CHECK_CHAIN}),
    ("fwid-mismatch", Faults(fwid_mismatch=True), {P.CHECK_FWID}),
    ("rim-version-mismatch", Faults(rim_version_mismatch=True), {P.rim_check("vbios", "version-match")}),
    ("index-conflict", Faults(index_conflict=True), {P.CHECK_INDEX_CONFLICT, P.CHECK_MEASUREMENTS}),
    ("tampered-rim", Faults(tamper_rim=True), {P.rim_check("vbios", "signature-verified")}),
    (
        "expired-rim-signer",
        Faults(expired_rim_signer=True),
        {P.rim_check("driver", "cert-chain"), P.rim_check("vbios", "cert-chain")},
    ),
]


@pytest.mark.parametrize(("case", "faults", "expected"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_fails_its_check(
    case: str, faults: Faults, expected: set[str], ca: SimulatedCa, verifier: Verifier
) -> None:
    ev = ca.gpu(f"GPU-{case}").evidence(NONCE, faults)
    verdict = verifier.verify(
        ev.report, ev.cert_chain_pem, NONCE, Policy(), at=SIM_NOW, rims=[ev.driver_rim, ev.vbios_rim]
    )
    assert not verdict.ok
    failed = {c.name for c in verdict.failed}
    assert expected <= failed, (failed, [c.detail for c in verdict.failed])
    if case == "tampered-measurement":
        assert verdict.mismatched_indexes == (3,)


@pytest.mark.parametrize("nvdec0_enabled", [False, True], ids=["nvdec0-disabled-skips-35", "nvdec0-enabled-checks-35"])
def test_nvdec0_rule(nvdec0_enabled: bool, ca: SimulatedCa, verifier: Verifier) -> None:
    ev = ca.gpu("GPU-nvdec").evidence(NONCE, Faults(nvdec0_enabled=nvdec0_enabled))
    verdict = verifier.verify(
        ev.report, ev.cert_chain_pem, NONCE, Policy(), at=SIM_NOW, rims=[ev.driver_rim, ev.vbios_rim]
    )
    assert verdict.ok
    assert ("skipped [35]" in verdict.check(P.CHECK_MEASUREMENTS).detail) is not nvdec0_enabled


def test_simulated_evidence_is_refused_by_the_default_trust_store(ca: SimulatedCa) -> None:
    ev = ca.gpu("GPU-x").evidence(NONCE)
    verdict = Verifier(TrustStore.default()).verify(
        ev.report, ev.cert_chain_pem, NONCE, Policy(), at=SIM_NOW, rims=[ev.driver_rim, ev.vbios_rim]
    )
    assert not verdict.ok
    failed = {c.name for c in verdict.failed}
    assert {P.CHECK_CHAIN, P.rim_check("driver", "cert-chain"), P.rim_check("vbios", "cert-chain")} <= failed


def test_gpus_of_one_ca_are_distinct(ca: SimulatedCa) -> None:
    a, b = ca.gpu("GPU-a"), ca.gpu("GPU-b")
    assert a.leaf.cert.serial_number != b.leaf.cert.serial_number and a.fwid != b.fwid


def test_evidence_age_policy(ca: SimulatedCa, verifier: Verifier) -> None:
    ev = ca.gpu("GPU-age").evidence(NONCE)
    old = verifier.verify(
        ev.report,
        ev.cert_chain_pem,
        NONCE,
        Policy(max_evidence_age_s=60),
        at=SIM_NOW,
        collected_at=SIM_NOW - timedelta(minutes=5),
        rims=[ev.driver_rim, ev.vbios_rim],
    )
    assert [c.name for c in old.failed] == [P.CHECK_EVIDENCE_AGE]
    future = verifier.verify(
        ev.report,
        ev.cert_chain_pem,
        NONCE,
        Policy(),
        at=SIM_NOW,
        collected_at=SIM_NOW + timedelta(minutes=5),
        rims=[ev.driver_rim, ev.vbios_rim],
    )
    assert [c.name for c in future.failed] == [P.CHECK_EVIDENCE_AGE]
    # No collection time (the CLI, evidence without a timestamp): the age is not applicable, never "0 s old".
    undated = verifier.verify(ev.report, ev.cert_chain_pem, NONCE, Policy(), at=SIM_NOW,
                              rims=[ev.driver_rim, ev.vbios_rim])
    age = undated.check(P.CHECK_EVIDENCE_AGE)
    assert (age.status, age.detail) == ("not-applicable", "no collection time; freshness rests on the nonce")


def test_version_minimums(ca: SimulatedCa, verifier: Verifier) -> None:
    ev = ca.gpu("GPU-ver").evidence(NONCE)
    rims = [ev.driver_rim, ev.vbios_rim]
    low = Policy(min_driver="550.54.14", min_vbios="96.00.5E.00.01")
    high = Policy(min_driver="560.0", min_vbios="96.00.A0.00.00")
    assert verifier.verify(ev.report, ev.cert_chain_pem, NONCE, low, at=SIM_NOW, rims=rims).ok
    failed = verifier.verify(ev.report, ev.cert_chain_pem, NONCE, high, at=SIM_NOW, rims=rims).failed
    assert {c.name for c in failed} == {P.CHECK_DRIVER_VERSION, P.CHECK_VBIOS_VERSION}


def test_policy_can_make_a_check_optional(ca: SimulatedCa, verifier: Verifier) -> None:
    ev = ca.gpu("GPU-opt").evidence(NONCE, Faults(fwid_mismatch=True))
    lenient = Policy(required_checks=frozenset(P.ALL_CHECKS) - {P.CHECK_FWID})
    verdict = verifier.verify(
        ev.report, ev.cert_chain_pem, NONCE, lenient, at=SIM_NOW, rims=[ev.driver_rim, ev.vbios_rim]
    )
    assert verdict.ok and verdict.check(P.CHECK_FWID).status == "fail"


def test_verifier_is_reusable_across_gpus_and_nonces(ca: SimulatedCa, verifier: Verifier) -> None:
    for i in range(3):
        nonce = os.urandom(32)
        ev = ca.gpu(f"GPU-{i}").evidence(nonce)
        assert verifier.verify(
            ev.report, ev.cert_chain_pem, nonce, Policy(), at=SIM_NOW, rims=[ev.driver_rim, ev.vbios_rim]
        ).ok


def test_debug_mode_gpu_is_never_claimed_non_debug(ca: SimulatedCa, verifier: Verifier) -> None:
    """secboot/dbgstat are derived as NVIDIA's verifier derives them: asserted only when every reference measurement
    matched. A GPU in CC devtools mode measures its debug configuration, so it fails strict and, where a missing RIM
    is tolerated, the token simply carries no secboot/dbgstat."""
    gpu = ca.gpu("GPU-dbg")
    debug = gpu.evidence(NONCE, Faults(devtools=True))
    strict = verifier.verify(debug.report, debug.cert_chain_pem, NONCE, Policy(), at=SIM_NOW,
                             rims=[debug.driver_rim, debug.vbios_rim])
    assert [c.name for c in strict.failed] == [P.CHECK_MEASUREMENTS]
    assert "secboot" not in strict.claims() and "dbgstat" not in strict.claims()
    no_rims = verifier.verify(debug.report, debug.cert_chain_pem, NONCE, Policy(missing_rim_fails=False), at=SIM_NOW)
    assert no_rims.ok and no_rims.result_text == "ACCEPTED (measurements not verified)"
    assert "secboot" not in no_rims.claims() and "dbgstat" not in no_rims.claims()
    good = gpu.evidence(NONCE)
    ok = verifier.verify(good.report, good.cert_chain_pem, NONCE, Policy(), at=SIM_NOW,
                         rims=[good.driver_rim, good.vbios_rim])
    assert ok.claims()["secboot"] is True and ok.claims()["dbgstat"] == "disabled" and ok.result_text == "ACCEPTED"


@pytest.mark.parametrize(("flag", "mode"), [(None, None), (0, "spt"), (1, "mpt"), (2, "ppcie")])
def test_gpu_mode_claim_only_when_the_evidence_carries_it(ca: SimulatedCa, verifier: Verifier, flag: int | None,
                                                          mode: str | None) -> None:
    ev = ca.gpu("GPU-mode").evidence(NONCE, Faults(feature_flag=flag))
    verdict = verifier.verify(ev.report, ev.cert_chain_pem, NONCE, Policy(), at=SIM_NOW,
                              rims=[ev.driver_rim, ev.vbios_rim])
    assert verdict.ok and verdict.claims().get("x-nvidia-gpu-mode") == mode
    assert ("x-nvidia-gpu-mode" in verdict.claims()) is (mode is not None)
