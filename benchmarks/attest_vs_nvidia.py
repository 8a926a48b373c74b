"""Verify the same real evidence with cc-gpu and with NVIDIA's nv-local-gpu-verifier 2.7.3; print medians and ratios.

    python benchmarks/attest_vs_nvidia.py [--runs 30] [--rounds 3] [--cli-runs 10]

Setup (the only one in which NVIDIA's verifier completes a full pass offline): the 2.1.1 sample report and chain with
its two test RIMs, verified as of 2025-01-15 with revocation off. NVIDIA's code runs in its own virtualenv under the
cache directory (its pinned dependencies conflict with ours), driven by `nvidia_harness.py`, which stubs its OCSP step,
pins its X.509 time and points it at the local files. Both sides are timed in-process, per verification, in the same
run; rounds alternate between the two so machine load affects both alike.

Figures:
  ours cold   a fresh Verifier (and trust store) per verification: no cache of ours is warm
  ours warm   one Verifier verifying the same evidence repeatedly (verified RIMs and chains cached)
  NVIDIA      its `attest()` per verification, with its logging as shipped and with its logging silenced
  CLI         wall time of a whole `python -m cc_gpu attest verify` process
Files are cached in $CC_GPU_CACHE (default ~/.cache/cc-gpu), as the tests cache them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cc_gpu.attest.ocsp import RevocationMode  # noqa: E402
from cc_gpu.attest.policy import Policy  # noqa: E402
from cc_gpu.attest.trust import TrustStore  # noqa: E402
from cc_gpu.attest.verifier import Verifier  # noqa: E402
from tests.nvidia_vectors import nvidia_files, nvidia_venv, nvidia_wheel  # noqa: E402

NVIDIA_VERSION = "2.7.3"
SAMPLE_VERSION = "2.1.1"
NONCE = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e"
AT = datetime(2025, 1, 15, tzinfo=UTC)
RIMS = ("Driver_RIM_test_no_gpu.swidtag", "1010_0200_882_96005E0001_test_no_gpu.swidtag")


def nvidia_python() -> Path:
    return nvidia_venv(f"nvidia-verifier-{NVIDIA_VERSION}", str(nvidia_wheel(NVIDIA_VERSION)))


def ours(sample_dir: Path, runs: int, *, warm: bool) -> list[float]:
    policy = Policy(revocation=RevocationMode.OFF)
    nonce = bytes.fromhex(NONCE)
    shared = Verifier(TrustStore.default()) if warm else None

    def once() -> None:
        verifier = shared or Verifier(TrustStore.default())
        report = (sample_dir / "attestationReport.txt").read_bytes()
        chain = (sample_dir / "gpuAkCertChain.txt").read_bytes()
        rims = [(sample_dir / name).read_bytes() for name in RIMS]
        verdict = verifier.verify(report, chain, nonce, policy, at=AT, rims=rims)
        if not verdict.ok:
            raise SystemExit(f"our verifier rejected the sample: {[c.name for c in verdict.failed]}")

    if warm:
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


def nvidia(python: Path, sample_dir: Path, runs: int, *, quiet: bool) -> dict[str, list[float] | float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [
            str(python),
            str(ROOT / "benchmarks" / "nvidia_harness.py"),
            "--samples",
            str(sample_dir),
            "--runs",
            str(runs),
            "--out",
            str(out),
        ]
        if quiet:
            cmd.append("--quiet")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tmp)
        figures: dict[str, list[float] | float] = json.loads(out.read_text())
    if not all(figures["results"]):  # type: ignore[union-attr]
        raise SystemExit("NVIDIA's verifier did not complete a full pass; see nvidia_harness.py")
    return figures


def cli(sample_dir: Path, runs: int) -> list[float]:
    cmd = [
        sys.executable,
        "-m",
        "cc_gpu",
        "attest",
        "verify",
        "--report",
        str(sample_dir / "attestationReport.txt"),
        "--cert-chain",
        str(sample_dir / "gpuAkCertChain.txt"),
        "--nonce",
        NONCE,
        "--at",
        "2025-01-15T00:00:00Z",
        "--revocation",
        "off",
        "--rim",
        str(sample_dir / RIMS[0]),
        "--rim",
        str(sample_dir / RIMS[1]),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30, help="verifications per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cli-runs", type=int, default=10)
    args = parser.parse_args()

    sample_dir = nvidia_files(SAMPLE_VERSION) / "samples"
    python = nvidia_python()
    cold: list[float] = []
    warm: list[float] = []
    nv_shipped: list[float] = []
    nv_quiet: list[float] = []
    nv_import: list[float] = []
    for _ in range(args.rounds):
        cold += ours(sample_dir, args.runs, warm=False)
        figures = nvidia(python, sample_dir, args.runs, quiet=True)
        nv_quiet += figures["times_s"]  # type: ignore[arg-type]
        nv_import.append(figures["import_s"])  # type: ignore[arg-type]
        warm += ours(sample_dir, args.runs, warm=True)
        nv_shipped += nvidia(python, sample_dir, args.runs, quiet=False)["times_s"]  # type: ignore[arg-type]
    cli_times = cli(sample_dir, args.cli_runs)

    med = statistics.median
    print(f"evidence: nv-local-gpu-verifier {SAMPLE_VERSION} sample + test RIMs, as of {AT.date()}, revocation off")
    print(f"NVIDIA verifier: nv-local-gpu-verifier {NVIDIA_VERSION} (own virtualenv, OCSP stubbed, time pinned)")
    print(f"runs: {args.rounds} rounds x {args.runs} verifications per figure; medians\n")
    print(f"  ours, cold (fresh verifier per run)   {ms(med(cold))}")
    print(f"  ours, warm (same verifier, cached)    {ms(med(warm))}")
    print(f"  NVIDIA, logging as shipped            {ms(med(nv_shipped))}")
    print(f"  NVIDIA, logging silenced              {ms(med(nv_quiet))}")
    print(f"  NVIDIA, import of its package         {ms(med(nv_import))}")
    print(f"  cc-gpu attest verify, whole process   {ms(med(cli_times))}  ({args.cli_runs} runs)\n")
    for label, reference in (("as shipped", med(nv_shipped)), ("silenced", med(nv_quiet))):
        print(
            f"  ratio vs NVIDIA {label:<10}: cold {reference / med(cold):6.1f}x (target >= 3), "
            f"warm {reference / med(warm):6.1f}x (target >= 25)"
        )
    print(f"  cold CLI process under 0.5 s: {'yes' if med(cli_times) < 0.5 else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
