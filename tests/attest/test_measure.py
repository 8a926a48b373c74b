"""Measurement comparison rules, table-driven over synthetic RIM entries."""

from __future__ import annotations

import pytest

from cc_gpu.attest.evidence import NVDEC0_DISABLED, NVDEC0_ENABLED, AttestationReport, MeasurementBlock, OpaqueData
from cc_gpu.attest.measure import compare
from cc_gpu.attest.rim import GoldenMeasurement

A, B, C = (bytes([n]) * 48 for n in (1, 2, 3))


def report(values: dict[int, bytes], nvdec0: int = NVDEC0_ENABLED) -> AttestationReport:
    blocks = tuple(MeasurementBlock(i + 1, 1, v) for i, v in sorted(values.items()))
    return AttestationReport(
        b"", bytes(32), 0, 1, 0xFF, 0, 0, blocks, bytes(32), OpaqueData({11: bytes([nvdec0])}), bytes(96)
    )


def g(index: int, *values: bytes, active: bool = True) -> GoldenMeasurement:
    return GoldenMeasurement(index, active, values)


CASES = [
    ("all-match", {0: A, 1: B}, {0: g(0, A)}, {1: g(1, B)}, NVDEC0_ENABLED, (), (), ()),
    ("second-alternative", {0: B}, {0: g(0, A, B)}, {}, NVDEC0_ENABLED, (), (), ()),
    ("mismatch", {0: C, 1: B}, {0: g(0, A)}, {1: g(1, B)}, NVDEC0_ENABLED, (0,), (), ()),
    ("inactive-ignored", {0: C}, {0: g(0, A, active=False)}, {}, NVDEC0_ENABLED, (), (), ()),
    ("runtime-without-golden-ignored", {0: A, 5: C}, {0: g(0, A)}, {}, NVDEC0_ENABLED, (), (), ()),
    ("golden-without-runtime", {0: A}, {0: g(0, A), 9: g(9, A)}, {}, NVDEC0_ENABLED, (9,), (), ()),
    ("conflict", {0: A}, {0: g(0, A)}, {0: g(0, A)}, NVDEC0_ENABLED, (), (0,), ()),
    ("inactive-duplicate-no-conflict", {0: A}, {0: g(0, A)}, {0: g(0, B, active=False)}, NVDEC0_ENABLED, (), (), ()),
    ("nvdec0-disabled-skips-35", {35: C}, {35: g(35, A)}, {}, NVDEC0_DISABLED, (), (), (35,)),
    ("nvdec0-enabled-checks-35", {35: C}, {35: g(35, A)}, {}, NVDEC0_ENABLED, (35,), (), ()),
    (
        "every-mismatch-listed",
        {0: C, 1: C, 2: A},
        {0: g(0, A), 1: g(1, A), 2: g(2, A)},
        {},
        NVDEC0_ENABLED,
        (0, 1),
        (),
        (),
    ),
]


@pytest.mark.parametrize(
    ("case", "runtime", "driver", "vbios", "nvdec0", "mismatches", "conflicts", "skipped"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_comparison(case: str, runtime, driver, vbios, nvdec0: int, mismatches, conflicts, skipped) -> None:  # type: ignore[no-untyped-def]
    result = compare(report(runtime, nvdec0), driver, vbios)
    assert (result.mismatches, result.conflicts, result.skipped) == (mismatches, conflicts, skipped)
    assert result.ok is (not mismatches and not conflicts)
