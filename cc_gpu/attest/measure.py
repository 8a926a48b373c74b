"""Comparing runtime measurements with the golden values of the driver and VBIOS RIMs.

Rules (NVIDIA's, with their NVDEC0 defect fixed): the golden set is the union of the *active* entries of both RIMs,
and an index active in both is a conflict (the evidence cannot be judged); for each active golden index i the
runtime block with SPDM index i+1 must equal one of its alternatives; runtime blocks with no active golden entry are
ignored; a golden index with no runtime block is a mismatch. Index 35 (NVDEC0) is skipped when the report says
NVDEC0 is disabled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cc_gpu.attest.evidence import NVDEC0_DISABLED, AttestationReport
from cc_gpu.attest.rim import GoldenMeasurement

NVDEC0_INDEX = 35


@dataclass(frozen=True)
class Comparison:
    conflicts: tuple[int, ...]
    mismatches: tuple[int, ...]
    skipped: tuple[int, ...]
    compared: int

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.mismatches


def compare(
    report: AttestationReport,
    driver: Mapping[int, GoldenMeasurement],
    vbios: Mapping[int, GoldenMeasurement],
) -> Comparison:
    active_driver = {i for i, g in driver.items() if g.active}
    active_vbios = {i for i, g in vbios.items() if g.active}
    conflicts = tuple(sorted(active_driver & active_vbios))
    golden = {i: driver[i] for i in active_driver} | {i: vbios[i] for i in active_vbios - active_driver}
    runtime = {block.index - 1: block.digest for block in report.measurements}
    nvdec0_off = report.opaque.nvdec0_status == NVDEC0_DISABLED
    mismatches: list[int] = []
    skipped: list[int] = []
    compared = 0
    for index in sorted(golden):
        if index == NVDEC0_INDEX and nvdec0_off:
            skipped.append(index)
            continue
        value = runtime.get(index)
        compared += 1
        if value is None or value not in golden[index].alternatives:
            mismatches.append(index)
    return Comparison(conflicts, tuple(mismatches), tuple(skipped), compared)
