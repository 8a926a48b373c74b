"""Property-based fuzzing of the parsers: whatever the input, the only exceptions are the typed ones."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_gpu.attest.errors import EvidenceParseError, PolicyError, RimError
from cc_gpu.attest.evidence import decode_report_text, parse_report
from cc_gpu.attest.policy import parse_policy
from cc_gpu.attest.rim import RimSignatureError, verify_rim
from cc_gpu.attest.trust import TrustStore
from tests.attest.conftest import Sample

MANY = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _parse(data: bytes) -> None:
    try:
        parse_report(data)
    except EvidenceParseError as e:
        assert e.offset >= 0 and e.field


@MANY
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    _parse(data)


@MANY
@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_header(data: bytes) -> None:
    _parse(bytes([0x11, 0xE0, 1, 0xFF]) + bytes(33) + bytes([0x11, 0x60, 0, 0]) + data)


@st.composite
def _mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@MANY
@given(data=st.data())
def test_mutated_real_report(data: st.DataObject, nvidia_273: Sample) -> None:
    _parse(data.draw(_mutations(decode_report_text(nvidia_273.report))))


@MANY
@given(st.text(max_size=80) | st.binary(max_size=80))
def test_hex_decoder(text: str | bytes) -> None:
    with contextlib.suppress(EvidenceParseError):
        decode_report_text(text)


@MANY
@given(st.text(max_size=200))
def test_policy_parser(text: str) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(text)


@MANY
@given(data=st.data())
def test_mutated_real_rim(data: st.DataObject, nvidia_211: Sample) -> None:
    rim = nvidia_211.rim("1010_0200_882_96005E0001_test_no_gpu.swidtag")
    mutated = data.draw(_mutations(rim))
    with contextlib.suppress(RimError, RimSignatureError):
        verify_rim(mutated, TrustStore.default(), datetime(2025, 1, 15, tzinfo=UTC))
