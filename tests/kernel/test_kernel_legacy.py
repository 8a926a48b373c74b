"""Real-kernel tier 1: the binder against Debian's own 6.12 kernel (vfio-pci, legacy groups and containers)."""

from __future__ import annotations

import pytest

from .conftest import expect_case, expect_complete
from .tiers import TierRun

pytestmark = pytest.mark.kernel

CASES = [
    "discovery_sees_the_kernel_groups",
    "bind_solo_group",
    "shared_group_refused_by_default",
    "shared_group_bound_when_foreign_allowed",
    "group_not_viable_is_detected",
    "restore_returns_every_device",
    "repeated_cycles",
    "killed_mid_bind_recovers",
    "restore_refuses_while_a_vmm_holds_the_group",
]


@pytest.mark.parametrize("name", CASES)
def test_case(legacy_tier: TierRun, name: str) -> None:
    expect_case(legacy_tier, name)


def test_guest_ran_every_case(legacy_tier: TierRun) -> None:
    expect_complete(legacy_tier, [c if isinstance(c, str) else c.values[0] for c in CASES])
