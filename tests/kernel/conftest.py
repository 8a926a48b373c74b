"""Session fixtures of the real-kernel tier: one guest boot per kernel, shared by all of that tier's cases.

When a tier cannot run (no package registry, the kernel build failed, QEMU missing) its tests fail, loudly, with
the reason. Set CC_GPU_KERNEL_TESTS=skip to turn that into an explicit skip carrying the same reason (for machines
known to lack what the tier needs); CI leaves it unset, so both tiers must run there.
"""

from __future__ import annotations

import os

import pytest

from .tiers import TierRun, TierUnavailable, run_tier

OPT_OUT = "CC_GPU_KERNEL_TESTS"


def _tier(tier: str) -> TierRun:
    try:
        return run_tier(tier)
    except TierUnavailable as e:
        message = f"REAL-KERNEL TIER {tier!r} CANNOT RUN ON THIS MACHINE: {e}"
        if os.environ.get(OPT_OUT) == "skip":
            pytest.skip(f"{message} (skipped because {OPT_OUT}=skip)")
        pytest.fail(f"{message}\nSet {OPT_OUT}=skip to skip the real-kernel tiers explicitly.", pytrace=False)


@pytest.fixture(scope="session")
def legacy_tier() -> TierRun:
    return _tier("legacy")


@pytest.fixture(scope="session")
def iommufd_tier() -> TierRun:
    return _tier("iommufd")


def expect_case(tier: TierRun, name: str) -> None:
    """Fail with the guest's and the kernel's own words unless the case ran in the guest and passed."""
    result = tier.cases.get(name)
    if result is None:
        pytest.fail(f"case {name!r} did not run in the guest\n{tier.report()}", pytrace=False)
    if not result.passed:
        pytest.fail(tier.report(name), pytrace=False)


def expect_complete(tier: TierRun, names: list[str]) -> None:
    """The guest ran exactly the cases the host expects, finished, and exited cleanly."""
    if not tier.finished or tier.run.timed_out or tier.run.exit_code not in (0, 1):
        pytest.fail(f"the guest did not finish its run\n{tier.report()}", pytrace=False)
    assert sorted(tier.cases) == sorted(names), "the guest's case list and the host's differ"
