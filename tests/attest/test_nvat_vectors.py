"""NVIDIA's own test data from its attestation SDK (NVAT), judged by our verifier as NVIDIA's data says it should be.

The files are copied under `tests/attest/vectors/nvidia-attestation-sdk/` with their provenance (`INDEX.md`) and
NVIDIA's Apache-2.0 licence. Each positive sample must parse and its nonce, certificate chain and SPDM signature must
verify; the GPU samples ship without their RIMs, so, as with NVIDIA's verifier ("RIM Not Found"), their measurements
are unverifiable: strict rejects on the missing RIM, a policy tolerating it accepts and says the measurements were
not verified. Each negative must be rejected for the reason NVIDIA's data names. Where NVIDIA gives the expected
claims (`hopperClaimsv3_decoded.json`, from its remote service for the same report), ours agree on every claim the
report alone decides.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_gpu.attest import policy as P
from cc_gpu.attest.errors import EvidenceParseError, UnsupportedOpaqueFormatError
from cc_gpu.attest.evidence import decode_report_text, parse_report
from cc_gpu.attest.measure import compare
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.rim import RimSignatureError, verify_rim
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verdict import Verdict
from cc_gpu.attest.verifier import Verifier

VECTORS = Path(__file__).parent / "vectors" / "nvidia-attestation-sdk"
NEW = VECTORS / "attestation-sdk-11b2bfeb"
TESTDATA = VECTORS / "attestation-sdk-73c032e" / "nv-attestation-sdk-cpp" / "unit-tests" / "testdata"
AT = datetime(2025, 6, 1, tzinfo=UTC)
OFFLINE = Policy(revocation=RevocationMode.OFF)
TOLERANT = Policy(revocation=RevocationMode.OFF, missing_rim_fails=False)
REPORT_CHECKS = (P.CHECK_PARSED, P.CHECK_NONCE, P.CHECK_CHAIN, P.CHECK_SIGNATURE)


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def nvat_json(name: str) -> tuple[bytes, bytes, bytes]:
    """NVAT's JSON evidence format: [{arch, nonce (hex), evidence (base64 SPDM), certificate (base64 PEM chain)}]."""
    (item,) = json.loads((VECTORS / "evidence_json" / name).read_text())
    return base64.b64decode(item["evidence"]), base64.b64decode(item["certificate"]), bytes.fromhex(item["nonce"])


def cmw(name: str) -> tuple[bytes, bytes, bytes | None]:
    """NVIDIA's CMW collection (`tag:nvidia.com,2026:verifier-input/...`): media type / base64url pairs per GPU."""
    doc = json.loads((NEW / name).read_text())
    gpu = doc["gpu_0"]
    nonce = gpu.get("nonce") or doc.get("nonce")
    return _b64(gpu["evidence"][1]), _b64(gpu["certificate"][1]), _b64(nonce[1]) if nonce else None


def verify(report: bytes, chain: bytes, nonce: bytes, policy: Policy = TOLERANT) -> Verdict:
    return Verifier(TrustStore.default()).verify(report, chain, nonce, policy, at=AT)


def status(verdict: Verdict, name: str) -> str:
    return verdict.check(name).status


# ---- NVDAOD opaque data ---------------------------------------------------------------------------------------------


def transcript() -> bytes:
    return bytes.fromhex((NEW / "sample_nvdaod_transcript.txt").read_text().strip())


def test_nvdaod_transcript_parses() -> None:
    report = parse_report(transcript())
    o = report.opaque
    assert (o.format.nvdaod, o.format.profile, o.format.major, o.format.minor) == (True, 0, 2, 0)
    assert len(o.fields) == 17 and len(report.measurements) == 64
    assert o.driver_version == "620.12" and o.vbios_version == "96.00.D9.00.0F"
    assert o.value_types[37] == 0x87, "a MIN_SVN entry (NVAT's rmDataValueType 0x87)"
    assert o.opaque_data_version == 2, "the header's major is the version, as in NVAT"
    assert o.gpu_mode == "spt"


def _with_opaque(opaque: bytes) -> bytes:
    """The transcript with its opaque data replaced (the signature no longer matters to the parser)."""
    raw = transcript()
    start = raw.index(b"NVDAOD")
    old_len = int.from_bytes(raw[start - 2 : start], "little")
    return raw[: start - 2] + len(opaque).to_bytes(2, "little") + opaque + raw[start + old_len :]


def _opaque() -> bytes:
    raw = transcript()
    start = raw.index(b"NVDAOD")
    return raw[start : start + int.from_bytes(raw[start - 2 : start], "little")]


@pytest.mark.parametrize(
    ("name", "change", "error", "field"),
    [
        ("profile 1", lambda o: o[:6] + b"\x01\x00" + o[8:], UnsupportedOpaqueFormatError, "opaque.Header.Profile"),
        ("major 3", lambda o: o[:8] + b"\x03" + o[9:], UnsupportedOpaqueFormatError, "opaque.Header.Major"),
        ("header cut short", lambda o: o[:9], EvidenceParseError, "opaque.Header.Minor"),
        ("entry cut inside its value type", lambda o: o[:12 + 3], EvidenceParseError, "ValueType"),
        ("entry longer than the data", lambda o: o[:-1], EvidenceParseError, "Value"),
        ("a type twice", lambda o: o + o[12:12 + 6 + int.from_bytes(o[16:18], "little")], EvidenceParseError,
         "opaque[VBIOS_VERSION]"),
    ],
)
def test_nvdaod_errors_are_typed(name: str, change: Any, error: type[Exception], field: str) -> None:
    with pytest.raises(error) as e:
        parse_report(_with_opaque(change(_opaque())))
    assert isinstance(e.value, EvidenceParseError) and field in e.value.field, (name, e.value)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), major=st.integers(0, 255), profile=st.integers(0, 2))
def test_fuzz_nvdaod(body: bytes, major: int, profile: int) -> None:
    """Whatever follows an NVDAOD header, the only exceptions are the typed ones."""
    opaque = b"NVDAOD" + profile.to_bytes(2, "little") + bytes([major, 0]) + b"\0\0" + body
    try:
        parse_report(_with_opaque(opaque))
    except EvidenceParseError as e:
        assert e.field and e.offset >= 0


# ---- evidence: positives and negatives ------------------------------------------------------------------------------

POSITIVES = [
    ("nvat_default_hopper_580.159.03.json", "580.159.03"),
    ("nvat_sample_hopper_535.86.09.json", "535.86.09"),
    ("nvat_sample_hopper_570.124.03_expired.json", "570.124.03"),
    ("nvat_sample_blackwell_575.32.json", "575.32"),
    ("nvv273_hopper.json", "550.90.07"),
]


@pytest.mark.parametrize(("name", "driver"), POSITIVES, ids=[p[0] for p in POSITIVES])
def test_nvidia_gpu_evidence_verifies_up_to_the_missing_rims(name: str, driver: str) -> None:
    report, chain, nonce = nvat_json(name)
    tolerant = verify(report, chain, nonce)
    assert [status(tolerant, c) for c in REPORT_CHECKS] == ["pass"] * 4, tolerant.failed
    assert tolerant.driver_version == driver
    assert tolerant.ok and tolerant.result_text == "ACCEPTED (measurements not verified)"
    assert "secboot" not in tolerant.claims() and "dbgstat" not in tolerant.claims()
    strict = verify(report, chain, nonce, OFFLINE)
    assert not strict.ok and P.rim_check("driver", "fetched") in [c.name for c in strict.failed], "RIM Not Found"


def test_blackwell_driver_rim_id_is_nvidias() -> None:
    report, chain, nonce = nvat_json("nvat_sample_blackwell_575.32.json")
    detail = verify(report, chain, nonce).check(P.rim_check("driver", "fetched")).detail
    assert "NV_GPU_CC_DRIVER_GB100_575.32" in detail, "the id NVIDIA's index names for this sample"


def test_invalid_signature_sample_is_rejected_for_its_signature() -> None:
    report, chain, nonce = nvat_json("nvat_sample_hopper_invalid_signature.json")
    verdict = verify(report, chain, nonce)
    assert not verdict.ok and status(verdict, P.CHECK_SIGNATURE) == "fail"
    assert status(verdict, P.CHECK_CHAIN) == "pass" and status(verdict, P.CHECK_NONCE) == "pass"
    raw = decode_report_text((TESTDATA / "sample_attestation_data/gpu/hopperAttestationReportInvalidSignature.txt")
                             .read_bytes())
    assert raw == report, "the JSON form and NVIDIA's text file are the same report"


def test_wrong_nonce_is_rejected() -> None:
    report, chain, _ = nvat_json("nvat_sample_hopper_535.86.09.json")
    verdict = verify(report, chain, bytes(32))
    assert not verdict.ok and status(verdict, P.CHECK_NONCE) == "fail"


def test_rubin_cmw_evidence_with_nvdaod_verifies() -> None:
    report, chain, nonce = cmw("rubin_evidence.cmw.json")
    assert nonce is not None
    verdict = verify(report, chain, nonce)
    assert [status(verdict, c) for c in REPORT_CHECKS] == ["pass"] * 4
    assert verdict.identity.hwmodel == "GR100 A01 GSP BROM" and verdict.driver_version == "620.54"
    assert parse_report(report).opaque.format.nvdaod and verdict.gpu_mode == "mpt"
    assert verdict.result_text == "ACCEPTED (measurements not verified)"


def test_blackwell_fsp_cmw_evidence_verifies_but_is_not_accepted_without_versions() -> None:
    """FSP evidence carries its versions in measurement blocks and CoRIM (not supported here): its chain and
    signature verify, as NVIDIA's data says; the verdict fails closed on what it cannot check."""
    report, chain, nonce = cmw("blackwell_fsp_evidence.cmw.json")
    assert nonce is None  # the collection carries no nonce of its own: only the report's request has one
    verdict = verify(report, chain, parse_report(report).nonce)
    assert [status(verdict, c) for c in REPORT_CHECKS] == ["pass"] * 4
    assert verdict.identity.hwmodel == "GB100 A01 FSP BROM"
    assert not verdict.ok and {c.name for c in verdict.failed} >= {P.CHECK_DRIVER_VERSION, P.CHECK_VBIOS_VERSION}


def test_claims_match_nvidias_expected_output() -> None:
    """`hopperClaimsv3_decoded.json` is NVIDIA's verdict for the nv-local-gpu-verifier 2.7.3 sample."""
    expected = json.loads((TESTDATA / "sample_attestation_data/hopperClaimsv3_decoded.json").read_text())["GPU-0"]
    report, chain, nonce = nvat_json("nvv273_hopper.json")
    ours = verify(report, chain, nonce).claims()
    same = ["eat_nonce", "ueid", "hwmodel", "x-nvidia-gpu-driver-version", "x-nvidia-gpu-vbios-version",
            "x-nvidia-gpu-attestation-report-parsed", "x-nvidia-gpu-attestation-report-nonce-match",
            "x-nvidia-gpu-attestation-report-signature-verified",
            "x-nvidia-gpu-attestation-report-cert-chain-fwid-match"]
    assert {k: ours[k] for k in same} == {k: expected[k] for k in same}
    # NVIDIA's remote service had the RIMs; without them ours does not assert what it could not check.
    assert expected["secboot"] is True and "secboot" not in ours and "dbgstat" not in ours


# ---- RIMs -----------------------------------------------------------------------------------------------------------


def _trust_with_rim_root(path: Path) -> TrustStore:
    default = TrustStore.default()
    return TrustStore.of(default.device_roots, [x509.load_pem_x509_certificate(path.read_bytes())],
                         allow_simulated=False)


def test_nvidias_trusted_rim_root_is_ours() -> None:
    root = x509.load_pem_x509_certificate((TESTDATA / "trusted_certs/rim_root.crt").read_bytes())
    assert TrustStore.default().rim_roots == (root,)


@pytest.mark.parametrize(
    ("name", "trust_root", "reason"),
    [
        ("incorrect_signature_driver_rim.xml", None, "RIM signature does not verify"),
        ("incorrect_cert_chain_driver_rim.xml", None, "'NVIDIA CoRIM L1 Root CA Debug Only' in the evidence is not"),
        ("sample_rims/NV_GPU_DRIVER_GH100_570.124.03_expired.xml", None, "'RIM L4 Signer') is not valid at"),
        ("NV_GPU_DRIVER_GH100_550.144.03.xml", "incorrect_rim_root.crt", "is not a configured trust anchor"),
        ("sample_rims/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml", None, "Digest mismatch"),
    ],
)
def test_bad_rims_are_rejected_for_nvidias_reason(name: str, trust_root: str | None, reason: str) -> None:
    trust = _trust_with_rim_root(TESTDATA / trust_root) if trust_root else TrustStore.default()
    with pytest.raises(RimSignatureError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        verify_rim((TESTDATA / name).read_bytes(), trust, AT)


def test_the_valid_rim_verifies() -> None:
    rim = verify_rim((TESTDATA / "NV_GPU_DRIVER_GH100_550.144.03.xml").read_bytes(), TrustStore.default(), AT)
    assert rim.version == "550.144.03" and rim.measurements


def test_vbios_measurement_mismatch_is_found() -> None:
    """NVIDIA's mismatching VBIOS RIM (validly signed) against the 535.86.09 sample it was made for."""
    rim = verify_rim((TESTDATA / "sample_rims/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml")
                     .read_bytes(), TrustStore.default(), AT)
    report, _, _ = nvat_json("nvat_sample_hopper_535.86.09.json")
    result = compare(parse_report(report), {}, rim.measurements)
    assert not result.ok and result.mismatches
