"""Benchmark: binding the 8 GPUs of a simulated DGX H100 with slow probes, in parallel and one after another.

Each vfio-pci probe takes `--probe-delay` seconds (0.5 by default, in the range real GPUs show). Per-group locks let
different groups bind at once, so 8 parallel binds should cost about one probe, where a node-wide lock costs eight.
Also times discovery and a full restore. Run: `python benchmarks/host_bind.py` (from the repository root).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cc_gpu.host.binder import Binder, BindPolicy
from cc_gpu.host.discovery import discover
from cc_gpu.host.sim import create_sim_host, sim_kernel

GROUPS = list(range(10, 18))


def _run(parallel: bool, delay: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        host = create_sim_host("dgx-h100", tmp)
        sim_kernel(host).set_default_bind_delay(delay)
        binder = Binder(host, BindPolicy(bind_timeout=30))
        start = time.perf_counter()
        if parallel:
            with ThreadPoolExecutor(len(GROUPS)) as pool:
                list(pool.map(lambda g: binder.bind(g, f"claim-{g}"), GROUPS))
        else:
            for g in GROUPS:
                binder.bind(g, f"claim-{g}")
        bound = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(len(GROUPS)) as pool:
            list(pool.map(lambda g: binder.restore(g, f"claim-{g}"), GROUPS))
        return bound, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-delay", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        host = create_sim_host("dgx-h100", tmp)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            discover(host)
            times.append(time.perf_counter() - start)
    print(f"discover dgx-h100 (8 GPUs):                median {statistics.median(times) * 1000:7.1f} ms")

    for parallel in (True, False):
        runs = [_run(parallel, args.probe_delay) for _ in range(args.repeat)]
        bind = statistics.median(r[0] for r in runs)
        restore = statistics.median(r[1] for r in runs)
        label = "parallel" if parallel else "sequential"
        print(f"bind 8 groups, {label:<10} ({args.probe_delay:.1f}s probes): median {bind:6.2f} s "
              f"({bind / (args.probe_delay * len(GROUPS)):.0%} of 8 probes); restore {restore:5.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
