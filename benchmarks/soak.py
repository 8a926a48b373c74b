"""Soak: thousands of prepare/unprepare cycles through the kubelet double against the real plugin process.

Each cycle creates a pod and a claim for one of the simulated DGX H100's eight GPUs (round robin), prepares it with
NodePrepareResources and unprepares it with NodeUnprepareResources, as the kubelet does for a pod's life. Measured on
the plugin process: resident memory growth after a warm-up (target under 5 MB), open file descriptors and threads,
and the files under the plugin directory, the CDI root and the host state, which must be the same at the end as at
the start. Any failed call counts as a failure (target zero). At the end the node must be exactly as built.

Run: `python benchmarks/soak.py` (from the repository root; `--cycles N`, default 1000; `--attested`: every claim
requires attestation of the GPU's simulated evidence, as on a node with an attested DeviceClass).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cc_gpu.dra.kubelet import KubeletDouble
from cc_gpu.host.sim import create_sim_host
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi
from tests.dra.attested import KEYS_NAMESPACE, attest_config
from tests.dra.harness import Node
from tests.reliability.crashnode import CrashNode


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    out["fds"] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return out


def _settled(pid: int) -> dict[str, int]:
    """The status once transient descriptors (a rescan's uevent reader, an HTTP request in flight) are closed."""
    samples = []
    for _ in range(5):
        samples.append(_status(pid))
        time.sleep(0.2)
    return {**samples[-1], "fds": min(x["fds"] for x in samples)}


def _fd_targets(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.append(str(fd.readlink()))
        except OSError:
            continue
    return sorted(out)


def _files(node: Node) -> dict[str, int]:
    def count(root: Path) -> int:
        return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0

    return {"plugin dir": count(node.plugin_dir), "cdi root": count(node.cdi_root)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50, help="cycles before the baseline is taken")
    parser.add_argument("--attested", action="store_true",
                        help="the node verifies simulated GPU evidence and every claim requires attestation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak") as tmp, ApiServerDouble() as server:
        root = Path(tmp)
        api = KubernetesApi(server.write_kubeconfig(root / "kubeconfig"))
        kubelet = KubeletDouble(root / "registry")
        kubelet.start()
        node = Node(root, server, api, kubelet)
        node.seed()
        config = None
        if args.attested:
            server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEYS_NAMESPACE}})
            # Host pre-flight attestation: GPUs in CC mode off (the host can query them), the CC gate waived.
            (root / "plugin.toml").write_text(f'[attestation]\nkeys_namespace = "{KEYS_NAMESPACE}"\n'
                                              '[policy]\nrequire_cc_mode = false\n')
            create_sim_host("dgx-h100", node.sim_root)
            for bdf, arch in node.kernel.load()["architecture"].items():
                if arch == "hopper":
                    node.kernel.set_cc_mode(bdf, "off")
            node.extra_args = ["--config", str(root / "plugin.toml")]
            config = [attest_config(required=True)]
        cn = CrashNode(node, "soak")
        assert cn.start()
        assert node.proc is not None
        pid = node.proc.pid
        devices = node.devices()
        prepare_s: list[float] = []
        unprepare_s: list[float] = []
        failures: list[str] = []
        baseline: dict[str, int] = {}
        files_before: dict[str, int] = {}
        samples: list[tuple[int, int]] = []
        fd_samples: list[tuple[int, int]] = []
        fds_before: list[str] = []
        started = time.perf_counter()
        for i in range(args.cycles + args.warmup):
            if i == args.warmup:
                baseline, files_before, fds_before = _settled(pid), _files(node), _fd_targets(pid)
                samples.append((0, baseline["VmRSS"]))
            claim = cn.new_claim([devices[i % len(devices)]], config=config)
            try:
                t = time.perf_counter()
                cn.prepare(claim)
                prepare_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                cn.unprepare(claim)
                unprepare_s.append(time.perf_counter() - t)
            except AssertionError as e:
                failures.append(f"cycle {i}: {e}")
            if i >= args.warmup and (i - args.warmup + 1) % 100 == 0:
                now = _status(pid)
                samples.append((i - args.warmup + 1, now["VmRSS"]))
                fd_samples.append((i - args.warmup + 1, now["fds"]))
        elapsed = time.perf_counter() - started
        end, files_after, fds_after = _settled(pid), _files(node), _fd_targets(pid)
        cn.check_converged([])
        cn.stop()
        kubelet.stop()
        api.close()

    def ms(xs: list[float], q: float) -> float:
        return 1000 * statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else 0.0

    growth_kib = end["VmRSS"] - baseline["VmRSS"]
    kind = "attested claims" if args.attested else "claims"
    print(f"cycles: {args.cycles} measured (+{args.warmup} warm-up) of {kind}, {elapsed:.1f} s, "
          f"failures: {len(failures)}")
    print(f"prepare ms p50 {ms(prepare_s, 50):.1f} p99 {ms(prepare_s, 99):.1f}; "
          f"unprepare ms p50 {ms(unprepare_s, 50):.1f} p99 {ms(unprepare_s, 99):.1f}")
    print(f"plugin RSS: {baseline['VmRSS'] / 1024:.1f} MiB after warm-up, {end['VmRSS'] / 1024:.1f} MiB at the end, "
          f"growth {growth_kib / 1024:.2f} MiB (target < 5)")
    print("RSS by cycle (MiB): " + ", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in samples)
          + f"; peak {max(k for _, k in samples) / 1024 - baseline['VmRSS'] / 1024:.2f} MiB above the baseline")
    print(f"open fds: {baseline['fds']} -> {end['fds']} (by cycle: {', '.join(f'{n}: {k}' for n, k in fd_samples)}); "
          f"threads: {baseline['Threads']} -> {end['Threads']}")
    opened = sorted(set(fds_after) - set(fds_before))
    if opened:
        print("fds opened and still open:", ", ".join(opened))
    print(f"files: {files_before} -> {files_after}")
    for f in failures[:10]:
        print("FAILED", f)
    ok = not failures and growth_kib < 5 * 1024 and end["fds"] == baseline["fds"] and files_after == files_before
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
