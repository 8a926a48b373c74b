"""NVIDIA's published evidence: the outcomes the reference files are known to give, and rejections of altered copies."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cc_gpu.attest import policy as P
from cc_gpu.attest.evidence import decode_report_text
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.sim import SimulatedCa
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verdict import NOT_APPLICABLE, PASS, UNVERIFIABLE
from cc_gpu.attest.verifier import Verifier
from tests.attest.conftest import AT_2025, Sample

OFF = Policy(revocation=RevocationMode.OFF)
TEST_RIMS = ("Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag")


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier(TrustStore.default())


def rims(sample: Sample, *names: str) -> list[bytes]:
    return [sample.rim(n) for n in names]


def test_211_sample_with_its_test_rims_passes(verifier: Verifier, nvidia_211: Sample) -> None:
    verdict = verifier.verify(
        nvidia_211.report, nvidia_211.chain, nvidia_211.nonce, OFF, at=AT_2025, rims=rims(nvidia_211, *TEST_RIMS)
    )
    assert verdict.ok, verdict.failed
    assert all(c.status in (PASS, NOT_APPLICABLE) for c in verdict.checks)
    assert verdict.check(P.CHECK_FWID).status == NOT_APPLICABLE
    assert verdict.identity.hwmodel == "GH100 A01 GSP BROM"
    assert verdict.identity.oemid == "5703"
    assert verdict.revocation == {"device": "off", "driver-rim": "off", "vbios-rim": "off"}
    assert "skipped [35]" in verdict.check(P.CHECK_MEASUREMENTS).detail  # NVDEC0 is disabled in this report


def test_211_sample_with_prod_vbios_rim_names_index_3(verifier: Verifier, nvidia_211: Sample) -> None:
    verdict = verifier.verify(
        nvidia_211.report,
        nvidia_211.chain,
        nvidia_211.nonce,
        OFF,
        at=AT_2025,
        rims=rims(nvidia_211, TEST_RIMS[0], "1010_0200_882_96005E0001_PROD.swidtag"),
    )
    assert not verdict.ok
    assert [c.name for c in verdict.failed] == [P.CHECK_MEASUREMENTS]
    assert 3 in verdict.mismatched_indexes
    assert verdict.mismatched_indexes == (1, 2, 3, 9)  # every mismatching index, not only the first


def test_273_hopper_sample_without_rims(verifier: Verifier, nvidia_273: Sample) -> None:
    at = datetime(2025, 1, 15, tzinfo=UTC)
    report_only = Policy(revocation=RevocationMode.OFF, missing_rim_fails=False)
    verdict = verifier.verify(nvidia_273.report, nvidia_273.chain, nvidia_273.nonce, report_only, at=at)
    for name in (P.CHECK_PARSED, P.CHECK_NONCE, P.CHECK_SIGNATURE, P.CHECK_CHAIN, P.CHECK_FWID):
        assert verdict.check(name).status == PASS, name
    assert verdict.check(P.CHECK_MEASUREMENTS).status == UNVERIFIABLE
    assert verdict.ok  # the policy only reports missing RIMs
    strict = verifier.verify(nvidia_273.report, nvidia_273.chain, nvidia_273.nonce, OFF, at=at)
    assert not strict.ok
    assert P.rim_check("driver", "fetched") in {c.name for c in strict.failed}


def test_273_hopper_sample_shipped_rims_do_not_match(verifier: Verifier, nvidia_273: Sample) -> None:
    verdict = verifier.verify(
        nvidia_273.report,
        nvidia_273.chain,
        nvidia_273.nonce,
        OFF,
        at=AT_2025,
        rims=rims(nvidia_273, TEST_RIMS[0], "1010_0200_882_96005E0001_PROD.swidtag"),
    )
    assert verdict.check(P.rim_check("driver", "version-match")).status != PASS
    assert verdict.check(P.rim_check("vbios", "version-match")).status != PASS
    assert not verdict.ok


def test_wrong_nonce_is_rejected(verifier: Verifier, nvidia_211: Sample) -> None:
    verdict = verifier.verify(
        nvidia_211.report, nvidia_211.chain, bytes(32), OFF, at=AT_2025, rims=rims(nvidia_211, *TEST_RIMS)
    )
    assert [c.name for c in verdict.failed] == [P.CHECK_NONCE]


def test_expired_rim_signer_is_rejected_at_a_pinned_later_time(verifier: Verifier, nvidia_211: Sample) -> None:
    later = datetime(2026, 11, 20, tzinfo=UTC)  # after the L3 RIM certificate's notAfter (2026-11-11)
    verdict = verifier.verify(
        nvidia_211.report, nvidia_211.chain, nvidia_211.nonce, OFF, at=later, rims=rims(nvidia_211, *TEST_RIMS)
    )
    failed = {c.name for c in verdict.failed}
    assert P.rim_check("driver", "cert-chain") in failed and P.rim_check("vbios", "cert-chain") in failed
    assert "not valid at 2026-11-20" in verdict.check(P.rim_check("driver", "cert-chain")).detail
    assert verdict.check(P.CHECK_CHAIN).status == PASS  # the device chain is valid to 9999


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


@pytest.mark.parametrize(
    "case",
    ["missing-intermediate", "missing-brom", "foreign-root", "leaf-swapped", "only-leaf", "empty-pem"],
)
def test_altered_chains_fail_the_chain_check(
    case: str, verifier: Verifier, nvidia_211: Sample, nvidia_273: Sample
) -> None:
    chain = list(x509.load_pem_x509_certificates(nvidia_211.chain))
    other = list(x509.load_pem_x509_certificates(nvidia_273.chain))
    if case == "missing-intermediate":
        del chain[2]
    elif case == "missing-brom":
        del chain[1]
    elif case == "foreign-root":
        chain[-1] = other[0]  # any certificate that is not the configured root
    elif case == "leaf-swapped":
        chain[0] = other[0]
    elif case == "only-leaf":
        chain = chain[:1]
    pem = b"not a certificate" if case == "empty-pem" else _pem(chain)
    verdict = verifier.verify(
        nvidia_211.report, pem, nvidia_211.nonce, OFF, at=AT_2025, rims=rims(nvidia_211, *TEST_RIMS)
    )
    assert not verdict.ok
    assert verdict.check(P.CHECK_CHAIN).status != PASS
    if case == "leaf-swapped":
        assert verdict.check(P.CHECK_SIGNATURE).status != PASS


def test_foreign_self_signed_root_is_not_accepted_from_evidence(
    verifier: Verifier, nvidia_211: Sample, sim_ca: SimulatedCa
) -> None:
    chain = list(x509.load_pem_x509_certificates(nvidia_211.chain))
    chain[-1] = sim_ca.device_root.cert
    verdict = verifier.verify(
        nvidia_211.report, _pem(chain), nvidia_211.nonce, OFF, at=AT_2025, rims=rims(nvidia_211, *TEST_RIMS)
    )
    assert "not a configured trust anchor" in verdict.check(P.CHECK_CHAIN).detail


def _regions(report: bytes) -> dict[str, Sequence[int]]:  # positions of each part of the report
    raw = decode_report_text(report)
    record_len = int.from_bytes(raw[37 + 5 : 37 + 8], "little")
    record = range(37 + 8, 37 + 8 + record_len)
    opaque_len_at = record.stop + 32
    opaque_len = int.from_bytes(raw[opaque_len_at : opaque_len_at + 2], "little")
    regions: dict[str, Sequence[int]] = {
        "request": range(37),
        "measurement-record": record,
        "opaque-data": range(opaque_len_at + 2, opaque_len_at + 2 + opaque_len),
        "signature": range(len(raw) - 96, len(raw)),
    }
    covered = {pos for r in regions.values() for pos in r}
    regions["headers-and-responder-nonce"] = [pos for pos in range(len(raw)) if pos not in covered]
    return regions


@pytest.mark.parametrize(
    "region", ["request", "measurement-record", "opaque-data", "signature", "headers-and-responder-nonce"]
)
def test_flipping_any_single_byte_is_never_accepted(region: str, verifier: Verifier, nvidia_211: Sample) -> None:
    raw = decode_report_text(nvidia_211.report)
    rim_docs = rims(nvidia_211, *TEST_RIMS)
    positions = _regions(nvidia_211.report)[region]
    assert len(positions) > 0
    for pos in positions:
        altered = raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1 :]
        verdict = verifier.verify(altered, nvidia_211.chain, nvidia_211.nonce, OFF, at=AT_2025, rims=rim_docs)
        assert not verdict.ok, f"byte {pos} flipped was accepted"
