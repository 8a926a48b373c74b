"""The two tiers of real-kernel tests, from provisioning to parsed per-case results.

- legacy: Debian's own 6.12 kernel (from the linux-image package, unpacked, not installed), modules loaded from it;
- iommufd: a minimal kernel built from Debian's linux-source-6.12 with IOMMUFD and the VFIO cdev (see
  iommufd-kernel.config), cached by the configuration's hash.

Each tier boots one guest that runs all its cases. Usable without pytest: `python -m tests.kernel.tiers legacy`
(or `iommufd`) prints every case's result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import initramfs, vm

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
PROVISION_TIMEOUT_S = 15 * 60
KERNEL_BUILD_TIMEOUT_S = 40 * 60
BOOT_TIMEOUT_S = {"legacy": 420.0, "iommufd": 300.0}


def cache_dir() -> Path:
    """`$CC_GPU_CACHE`, else `~/.cache/cc-gpu`: kernels, the built iommufd kernel and initramfs images."""
    return Path(os.environ.get("CC_GPU_CACHE") or Path.home() / ".cache" / "cc-gpu")


class TierUnavailable(Exception):
    """The tier cannot run on this machine (provisioning or the kernel build failed); the message says why."""


@dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    seconds: float
    detail: str
    errno: str | None
    dmesg: str


@dataclass(frozen=True)
class TierRun:
    tier: str
    kernel: str
    run: vm.GuestRun
    cases: dict[str, CaseResult]
    finished: bool
    error: str | None

    def report(self, name: str | None = None) -> str:
        """What to show when something failed: the guest's own words and the kernel log."""
        parts = [f"tier {self.tier}: guest exit code {self.run.exit_code}, timed out: {self.run.timed_out}, "
                 f"{self.run.seconds:.1f} s, harness finished: {self.finished}"]
        if self.error:
            parts.append(f"harness error: {self.error}")
        result = self.cases.get(name) if name else None
        if result is not None:
            parts.append(f"case {name}: {result.detail}")
            if result.errno:
                parts.append(f"errno: {result.errno}")
            if result.dmesg:
                parts.append("kernel log during the case:\n" + result.dmesg)
        else:
            parts.append("guest log (tail):\n" + self.run.tail(self.run.guest_log, 40))
            parts.append("serial console (tail):\n" + self.run.tail(self.run.console, 40))
            parts.append("kernel log (tail):\n" + self.run.tail(self.run.dmesg, 60))
        return "\n".join(parts)


def _script(args: list[str], timeout: float, what: str) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise TierUnavailable(f"{what} did not finish within {timeout:.0f} s") from e
    if done.returncode != 0:
        raise TierUnavailable(f"{what} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def kernel_for(tier: str) -> initramfs.Kernel:
    if tier == "legacy":
        root = _script([str(HERE / "provision.sh")], PROVISION_TIMEOUT_S, "provisioning (provision.sh)")
        return initramfs.debian_kernel(Path(root))
    _script([str(HERE / "provision.sh")], PROVISION_TIMEOUT_S, "provisioning (provision.sh)")
    image = Path(_script([str(HERE / "build-iommufd-kernel.sh")], KERNEL_BUILD_TIMEOUT_S,
                         "the iommufd kernel build (build-iommufd-kernel.sh)"))
    return initramfs.Kernel(image=image, release="iommufd-" + image.parent.name, modules_dir=None)


def run_tier(tier: str) -> TierRun:
    kernel = kernel_for(tier)
    image = initramfs.build(kernel, cache_dir())
    command = (
        "export PYTHONPATH=/work:/opt/pylib PYTHONDONTWRITEBYTECODE=1\n"
        f"cd /work/tests/kernel/guest && exec python3 run.py --tier {tier} --results /out/results.json\n"
    )
    run = vm.boot(kernel.image, image, PROJECT, command, BOOT_TIMEOUT_S[tier])
    payload = json.loads(run.results) if run.results else {}
    cases = {
        c["name"]: CaseResult(c["name"], bool(c["passed"]), float(c.get("seconds", 0.0)), str(c.get("detail", "")),
                              c.get("errno"), str(c.get("dmesg", "")))
        for c in payload.get("cases", [])
    }
    return TierRun(tier, str(payload.get("kernel", kernel.release)), run, cases, bool(payload.get("finished")),
                   payload.get("error"))


def main(argv: list[str]) -> int:
    failed = 0
    for tier in argv or ["legacy", "iommufd"]:
        result = run_tier(tier)
        print(f"== tier {tier} on {result.kernel}: {result.run.seconds:.1f} s in the guest")
        for c in result.cases.values():
            print(f"  {'PASS' if c.passed else 'FAIL'} {c.name} ({c.seconds:.1f} s): {c.detail.splitlines()[0]}")
            if not c.passed:
                failed += 1
                print(result.report(c.name))
        if not result.finished:
            failed += 1
            print(result.report())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
