"""RIM sources: NVIDIA's RIM ids, a local directory, an HTTP mirror speaking the RIM service's JSON, and chaining."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cc_gpu.attest import policy as P
from cc_gpu.attest.errors import RimFetchError
from cc_gpu.attest.evidence import AttestationReport, OpaqueData, decode_report_text, parse_report
from cc_gpu.attest.ocsp import RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.sources import (
    ChainedRimSource,
    DirectoryRimSource,
    HttpRimSource,
    driver_rim_id,
    is_vbios_version,
    vbios_rim_id,
)
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verifier import Verifier
from tests.attest.conftest import AT_2025, Sample

TEST_RIMS = {
    "NV_GPU_DRIVER_GH100_545.00": "Driver_RIM_test_no_gpu.swidtag",
    "NV_GPU_VBIOS_1010_0200_882_96005E0001": "1010_0200_882_96005E0001_test_no_gpu.swidtag",
}


def test_rim_ids_follow_nvidia_naming(nvidia_211: Sample, nvidia_273: Sample) -> None:
    r211 = parse_report(decode_report_text(nvidia_211.report))
    r273 = parse_report(decode_report_text(nvidia_273.report))
    assert driver_rim_id(r211) == "NV_GPU_DRIVER_GH100_545.00"
    assert vbios_rim_id(r211) == "NV_GPU_VBIOS_1010_0200_882_96005E0001"
    assert vbios_rim_id(r273) == "NV_GPU_VBIOS_1010_0200_882_96009F0001"


@pytest.mark.parametrize(("version", "vbios"), [("96.00.5E.00.01", True), ("545.00", False), ("550.90.07", False)])
def test_version_kinds(version: str, vbios: bool) -> None:
    assert is_vbios_version(version) is vbios


@pytest.fixture
def rim_dir(tmp_path: Path, nvidia_211: Sample) -> Path:
    for rim_id, name in TEST_RIMS.items():
        (tmp_path / f"{rim_id}.swidtag").write_bytes(nvidia_211.rim(name))
    return tmp_path


def test_directory_source_drives_a_full_pass(rim_dir: Path, nvidia_211: Sample) -> None:
    verifier = Verifier(TrustStore.default(), rim_source=DirectoryRimSource(rim_dir))
    verdict = verifier.verify(
        nvidia_211.report, nvidia_211.chain, nvidia_211.nonce, Policy(revocation=RevocationMode.OFF), at=AT_2025
    )
    assert verdict.ok, verdict.failed


def test_directory_source_refuses_path_tricks(rim_dir: Path) -> None:
    source = DirectoryRimSource(rim_dir)
    for bad in ("../etc/passwd", "a/b", ".hidden", ""):
        with pytest.raises(RimFetchError):
            source.fetch(bad)
    assert source.fetch("NV_GPU_DRIVER_GH100_1.0") is None


class FakeRimService:
    """Answers like NVIDIA's RIM service: JSON with the base64 RIM under "rim"; 404 for unknown ids."""

    def __init__(self, rims: dict[str, bytes], status: int = 200) -> None:
        self.rims = rims
        self.status = status
        self.urls: list[str] = []

    def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        self.urls.append(url)
        rim_id = url.rsplit("/", 1)[1]
        if self.status != 200:
            return self.status, b""
        if rim_id not in self.rims:
            return 404, b"{}"
        body = {"id": rim_id, "rim": base64.b64encode(self.rims[rim_id]).decode(), "rim_format": "SWID"}
        return 200, json.dumps(body).encode()


def test_http_mirror_source(nvidia_211: Sample) -> None:
    service = FakeRimService({rim_id: nvidia_211.rim(name) for rim_id, name in TEST_RIMS.items()})
    verifier = Verifier(TrustStore.default(), rim_source=HttpRimSource(service, "https://mirror.example/v1/rim"))
    verdict = verifier.verify(
        nvidia_211.report, nvidia_211.chain, nvidia_211.nonce, Policy(revocation=RevocationMode.OFF), at=AT_2025
    )
    assert verdict.ok
    assert service.urls == [f"https://mirror.example/v1/rim/{i}" for i in TEST_RIMS]


@pytest.mark.parametrize(("case", "status", "body"), [("server-error", 503, None), ("bad-json", 200, b"{")])
def test_http_mirror_errors_are_typed(case: str, status: int, body: bytes | None) -> None:
    class Broken:
        def get(self, url: str, timeout: float) -> tuple[int, bytes]:
            return status, body or b""

    with pytest.raises(RimFetchError):
        HttpRimSource(Broken()).fetch("NV_GPU_DRIVER_GH100_545.00")


def test_fetch_failure_is_a_failed_check_not_a_crash(nvidia_211: Sample) -> None:
    verifier = Verifier(TrustStore.default(), rim_source=HttpRimSource(FakeRimService({}, status=500)))
    verdict = verifier.verify(
        nvidia_211.report, nvidia_211.chain, nvidia_211.nonce, Policy(revocation=RevocationMode.OFF), at=AT_2025
    )
    assert verdict.check(P.rim_check("driver", "fetched")).status == "fail"
    assert "HTTP 500" in verdict.check(P.rim_check("driver", "fetched")).detail


def test_chained_source_first_hit_wins(rim_dir: Path, nvidia_211: Sample) -> None:
    service = FakeRimService({})
    chained = ChainedRimSource([DirectoryRimSource(rim_dir), HttpRimSource(service)])
    assert chained.fetch("NV_GPU_DRIVER_GH100_545.00") == nvidia_211.rim(TEST_RIMS["NV_GPU_DRIVER_GH100_545.00"])
    assert service.urls == []
    assert chained.fetch("NV_GPU_DRIVER_GH100_1.0") is None
    assert len(service.urls) == 1


def test_blackwell_driver_rim_id_uses_chip_info() -> None:
    opaque = OpaqueData({3: b"570.124.06\0", 35: b"GB100\0"})
    report = AttestationReport(b"", bytes(32), 0, 1, 0xFF, 0, 0, (), bytes(32), opaque, bytes(96))
    assert driver_rim_id(report) == "NV_GPU_CC_DRIVER_GB100_570.124.06"
    assert vbios_rim_id(report) is None  # project/SKU fields absent: no id to ask for
