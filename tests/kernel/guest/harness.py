"""Runs the real-kernel cases inside the guest and writes one result per case for the host to read back.

Result protocol (`results.json` in the output share, rewritten after every case so a crash or hang still hands back
what finished): {"tier", "kernel", "finished", "cases": [{"name", "passed", "seconds", "detail", "errno", "dmesg"}]}.
`detail` says what the kernel answered; `errno` is the symbolic errno of the refusing syscall, if one refused;
`dmesg` holds the kernel-log lines written while the case ran, when it failed.

Between cases every test device is checked against the state the guest booted with; a case that leaves a device
changed fails, and the device is put back by hand so the next case starts clean.

Usage (in the guest): python3 run.py --tier legacy|iommufd --results /out/results.json [--only NAME ...]
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import kstate

CASE_TIMEOUT_S = 150


class CaseFailure(AssertionError):
    """The kernel answered something other than what the case expects."""


class CaseTimeout(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailure(message)


def expect_errno(expected: int, what: str, call: Callable[[], object]) -> None:
    """`call` must fail with exactly `expected` (the kernel's refusal is part of the contract)."""
    try:
        call()
    except OSError as e:
        expect(e.errno == expected,
               f"{what}: expected {errno.errorcode[expected]}, the kernel answered {errno.errorcode.get(e.errno or 0)}")
        return
    raise CaseFailure(f"{what}: expected {errno.errorcode[expected]}, the kernel accepted it")


@dataclass(frozen=True)
class Case:
    name: str
    tiers: tuple[str, ...]
    run: Callable[[kstate.Topology], str | None]


CASES: list[Case] = []


def case(name: str, *tiers: str) -> Callable[[Callable[[kstate.Topology], str | None]], Callable[..., str | None]]:
    def register(fn: Callable[[kstate.Topology], str | None]) -> Callable[[kstate.Topology], str | None]:
        CASES.append(Case(name, tiers, fn))
        return fn

    return register


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise CaseTimeout("case did not finish within its time limit")


def _errno_of(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return errno.errorcode.get(seen.errno, str(seen.errno))
        seen = seen.__cause__ or seen.__context__
    return None


def _run_one(
    c: Case, topo: kstate.Topology, baseline: dict[str, kstate.DeviceState], timeout: int
) -> dict[str, object]:
    before = len(kstate.dmesg_lines())
    started = time.monotonic()
    result: dict[str, object] = {"name": c.name, "passed": False, "errno": None, "dmesg": ""}
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    # A case stuck where SIGALRM cannot reach it (an uninterruptible syscall) still ends: the traceback of every
    # thread goes to the guest log and the harness exits, so the guest powers off instead of hanging the run.
    faulthandler.dump_traceback_later(timeout + 15, exit=True)
    try:
        result["detail"] = c.run(topo) or "ok"
        result["passed"] = True
    except BaseException as e:
        result["detail"] = f"{type(e).__name__}: {e}\n" + "".join(traceback.format_exception(e)[-6:])
        result["errno"] = _errno_of(e)
    finally:
        signal.alarm(0)
        faulthandler.cancel_dump_traceback_later()
    now = kstate.snapshot(list(baseline))
    leftovers = {b: s for b, s in now.items() if s != baseline[b]}
    if leftovers:
        result["passed"] = False
        result["detail"] = (f"{result['detail']}\nleft devices changed: {kstate.describe(leftovers)} "
                            f"(booted as: {kstate.describe({b: baseline[b] for b in leftovers})})")
        for bdf in leftovers:
            try:
                kstate.put_back_by_hand(bdf, baseline[bdf])
            except OSError as e:
                result["detail"] = f"{result['detail']}\nputting {bdf} back by hand failed: {e}"
    if not result["passed"]:
        result["dmesg"] = "\n".join(kstate.dmesg_lines()[before:][-80:])
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def _write(path: str, payload: dict[str, object]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tier", required=True, choices=("legacy", "iommufd"))
    parser.add_argument("--results", required=True)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--case-timeout", type=int, default=CASE_TIMEOUT_S)
    args = parser.parse_args(argv)

    payload: dict[str, object] = {"tier": args.tier, "kernel": os.uname().release, "finished": False, "cases": []}
    results: list[dict[str, object]] = payload["cases"]  # type: ignore[assignment]
    try:
        topo = kstate.topology()
    except Exception as e:
        payload["error"] = f"topology not as expected: {e}"
        _write(args.results, payload)
        return 2
    baseline = kstate.snapshot(topo.all_members())
    payload["baseline"] = kstate.describe(baseline)
    for c in CASES:
        if args.tier not in c.tiers or (args.only and c.name not in args.only):
            continue
        print(f"case {c.name} ...", flush=True)
        results.append(_run_one(c, topo, baseline, args.case_timeout))
        print(f"case {c.name}: {'pass' if results[-1]['passed'] else 'FAIL'}", flush=True)
        _write(args.results, payload)
    payload["finished"] = True
    _write(args.results, payload)
    return 0 if all(r["passed"] for r in results) else 1

