"""Real-kernel tier 2: a 6.12 kernel with IOMMUFD and the VFIO cdev, built from Debian's linux-source-6.12."""

from __future__ import annotations

import pytest

from .conftest import expect_case, expect_complete
from .tiers import TierRun

pytestmark = pytest.mark.kernel

CASES = [
    "discovery_sees_the_kernel_groups",
    "bind_solo_group",
    "restore_returns_every_device",
    "iommufd_device_nodes",
    "bind_prefers_iommufd_cdev",
    "iommufd_cycles_over_all_groups",
    "confidential_claim_gets_an_iommufd_cdev_spec",
]


@pytest.mark.parametrize("name", CASES)
def test_case(iommufd_tier: TierRun, name: str) -> None:
    expect_case(iommufd_tier, name)


def test_guest_ran_every_case(iommufd_tier: TierRun) -> None:
    expect_complete(iommufd_tier, CASES)
