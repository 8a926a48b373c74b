"""Report parsing: real reports decode to the documented fields; each kind of malformation names field and offset."""

from __future__ import annotations

import pytest

from cc_gpu.attest.errors import EvidenceParseError
from cc_gpu.attest.evidence import decode_report_text, parse_report
from tests.attest.conftest import Sample


def test_211_report_fields(nvidia_211: Sample) -> None:
    report = parse_report(decode_report_text(nvidia_211.report))
    assert report.nonce == nvidia_211.nonce
    assert len(report.measurements) == 64
    assert [b.index for b in report.measurements] == list(range(1, 65))
    assert report.opaque.driver_version == "545.00"
    assert report.opaque.vbios_version == "96.00.5E.00.01"
    assert report.opaque.fwid is None
    assert (report.opaque.project, report.opaque.project_sku, report.opaque.chip_sku) == ("1010", "0200", "882")
    assert report.opaque.describe()["nvdec0_status"] == "disabled"
    assert report.signed_bytes + report.signature == report.raw


def test_273_report_fields(nvidia_273: Sample) -> None:
    report = parse_report(decode_report_text(nvidia_273.report))
    assert report.nonce == nvidia_273.nonce
    assert report.opaque.driver_version == "550.90.07"
    assert report.opaque.vbios_version == "96.00.9F.00.01"
    assert report.opaque.fwid is not None and len(report.opaque.fwid) == 48


def test_hex_text_with_whitespace_and_raw_bytes_agree(nvidia_211: Sample) -> None:
    raw = decode_report_text(nvidia_211.report)
    spaced = " \n".join(nvidia_211.report.decode()[i : i + 64] for i in range(0, len(nvidia_211.report), 64))
    assert decode_report_text(spaced) == raw
    assert decode_report_text(raw) == raw


def _tlv(kind: int, value: bytes) -> bytes:
    return kind.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value


def _build(
    *,
    version: int = 0x11,
    code: int = 0x60,
    blocks: int = 1,
    spec: int = 1,
    value_size: int = 48,
    opaque: bytes = _tlv(3, b"550.00\0"),
    trailing: bytes = b"",
    record_delta: int = 0,
    index: int = 1,
) -> bytes:
    block = bytes([index, spec]) + (value_size + 3).to_bytes(2, "little") + b"\x01"
    block += value_size.to_bytes(2, "little") + bytes(value_size)
    record = block * blocks
    request = bytes([0x11, 0xE0, 1, 0xFF]) + bytes(32) + b"\0"
    response = bytes([version, code, 0, 0, blocks]) + (len(record) + record_delta).to_bytes(3, "little") + record
    response += bytes(32) + len(opaque).to_bytes(2, "little") + opaque + bytes(96)
    return request + response + trailing


def test_minimal_valid_report_parses() -> None:
    report = parse_report(_build())
    assert report.opaque.driver_version == "550.00"


def test_unknown_opaque_type_is_kept_not_fatal() -> None:
    report = parse_report(_build(opaque=_tlv(3, b"1\0") + _tlv(200, b"xyz")))
    assert report.opaque.unknown_types == (200,)
    assert report.opaque.describe()["tlvs"]["UNKNOWN_200"] == "78797a"


@pytest.mark.parametrize(
    ("case", "data", "field"),
    [
        ("empty", b"", "request.SPDMVersion"),
        ("wrong-request-version", b"\x10" + _build()[1:], "request.SPDMVersion"),
        ("wrong-request-code", b"\x11\xe1" + _build()[2:], "request.RequestResponseCode"),
        ("truncated-nonce", _build()[:20], "request.Nonce"),
        ("wrong-response-version", _build(version=0x12), "response.SPDMVersion"),
        ("wrong-response-code", _build(code=0x61), "response.RequestResponseCode"),
        ("non-dmtf-block", _build(spec=2), "measurement[0].MeasurementSpecification"),
        ("short-digest", _build(value_size=32), "measurement[0].DMTFSpecMeasurementValueSize"),
        ("zero-index", _build(index=0), "measurement[0].Index"),
        ("repeated-index", _build(blocks=2), "measurement[1].Index"),
        ("record-too-long", _build(record_delta=5), "response.MeasurementRecord"),
        ("record-too-short", _build(record_delta=-5), "measurement[0].Measurement"),
        ("truncated-opaque-tlv", _build(opaque=b"\x03\x00\x09\x00abc"), "opaque[DRIVER_VERSION].Value"),
        ("duplicate-opaque-type", _build(opaque=_tlv(3, b"a") + _tlv(3, b"b")), "opaque[DRIVER_VERSION]"),
        ("short-fwid", _build(opaque=_tlv(20, bytes(10))), "opaque[FWID]"),
        ("trailing-bytes", _build(trailing=b"\0"), "trailing data"),
        ("missing-signature", _build()[:-10], "response.Signature"),
    ],
)
def test_malformed_reports_raise_typed_errors(case: str, data: bytes, field: str) -> None:
    with pytest.raises(EvidenceParseError) as info:
        parse_report(data)
    assert info.value.field == field
    assert f"at offset {info.value.offset}" in str(info.value)


@pytest.mark.parametrize(("case", "text"), [("odd-length", "abc"), ("not-hex", "zz11"), ("mixed", "11e0 0g")])
def test_bad_hex_text(case: str, text: str) -> None:
    with pytest.raises(EvidenceParseError):
        decode_report_text(text)
