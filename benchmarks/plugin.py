"""Benchmarks of the kubelet plugin on a simulated 8-GPU node: one command, figures on stdout.

    python benchmarks/plugin.py [--steady-seconds 60] [--cycles 50]

Prints: prepare latency p50/p99 for one claim (through the kubelet double, over gRPC, to the real plugin process);
wall time for 8 concurrent NodePrepareResources calls for 8 claims on 8 GPUs with a 0.5 s simulated bind each (target
under 1.2 s; a node-wide lock would take 4 s); start-to-published time and what the plugin adds on top of importing
the `kubernetes` client; plugin RSS; API writes during steady state (target 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cc_gpu.dra.kubelet import KubeletDouble  # noqa: E402
from cc_gpu.host.sim import SimKernel, create_sim_host  # noqa: E402
from cc_gpu.kube.apiserver import ApiServerDouble, cluster  # noqa: E402
from cc_gpu.kube.client import KubernetesApi  # noqa: E402

DRIVER = "gpu.cc-gpu.io"
NODE = "bench-node"
SNP = "kata-qemu-nvidia-gpu-snp"


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.server = ApiServerDouble().start()
        self.kubeconfig = self.server.write_kubeconfig(root / "kubeconfig")
        self.api = KubernetesApi(self.kubeconfig)
        self.server.create(cluster.node(NODE))
        self.server.create(cluster.runtime_class(SNP, SNP))
        self.server.create(cluster.device_class("vfio-gpu", DRIVER))
        # The namespace where each node publishes its verdict-token keys, as the Helm chart creates it.
        self.server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cc-gpu-token-keys"}})
        self.kubelet = KubeletDouble(root / "registry")
        self.kubelet.start()
        # A node's sysfs exists before the plugin starts: build the simulated tree first, so start-to-published
        # measures the plugin, not the simulator writing its files.
        create_sim_host("dgx-h100", root / "sim", state=root / "plugin" / "host-state")
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = 0

    def start_plugin(self, *extra: str) -> float:
        """Start the plugin; return seconds from spawn until its slice is visible in the API."""
        args = [sys.executable, "-m", "cc_gpu", "plugin", "--node-name", NODE, "--sim", "dgx-h100",
                "--sim-root", str(self.root / "sim"), "--kubeconfig", str(self.kubeconfig),
                "--plugin-dir", str(self.root / "plugin"), "--registry-dir", str(self.root / "registry"),
                "--cdi-root", str(self.root / "cdi"), "--log-level", "warning", *extra]
        seen = self.kubelet.registrations
        start = time.monotonic()
        with (self.root / "plugin.log").open("ab") as log:
            self.proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO)},
                                         stdout=subprocess.DEVNULL, stderr=log)
        while not self.api.list_resource_slices(DRIVER, NODE):
            time.sleep(0.005)
        published = time.monotonic() - start
        self.kubelet.wait_registered(DRIVER, timeout=30, after=seen)
        return published

    def stop_plugin(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=20)

    def devices(self) -> list[str]:
        (s,) = self.api.list_resource_slices(DRIVER, NODE)
        return [d["name"] for d in s["spec"]["devices"]]

    def claim(self, device: str) -> tuple[str, str, str]:
        self.n += 1
        pod = self.server.create(cluster.pod("default", f"vm-{self.n}", node_name=NODE, runtime_class_name=SNP))
        claim = self.server.create(cluster.resource_claim("default", f"c-{self.n}", device_class_name="vfio-gpu"))
        claim["status"] = cluster.allocation_status([cluster.Allocated("gpu", DRIVER, NODE, device)], [pod],
                                                    node_name=NODE)
        rt = self.server.store_type("resourceclaims")  # written as kube-scheduler writes it
        self.server.store.replace(rt, "default", f"c-{self.n}", claim, subresource="status")
        return "default", f"c-{self.n}", str(claim["metadata"]["uid"])

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop_plugin()
        self.kubelet.stop()
        self.api.close()
        self.server.stop()


def kubernetes_import_cost() -> tuple[float, float]:
    """Seconds and MB RSS of a bare interpreter importing the `kubernetes` client (the floor the plugin sits on)."""
    code = ("import time,resource; t=time.monotonic(); import kubernetes.client; "
            "print(time.monotonic()-t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cc-gpu-bench-", dir="/tmp") as tmp:
        bench = Bench(Path(tmp))
        try:
            k_secs, k_mb = kubernetes_import_cost()
            published = bench.start_plugin("--rescan-seconds", "5")
            print(f"start-to-published:               {published:.2f} s  (target < 2.5 s; importing the kubernetes "
                  f"client alone: {k_secs:.2f} s, so the plugin adds {published - k_secs:.2f} s)")
            devices = bench.devices()

            latencies = []
            for _ in range(args.cycles):
                claim = bench.claim(devices[0])
                t = time.monotonic()
                result = bench.kubelet.prepare(DRIVER, [claim])[claim[2]]
                latencies.append(time.monotonic() - t)
                assert not result.error, result.error
                bench.kubelet.unprepare(DRIVER, [claim])
            print(f"prepare latency, one claim:       p50 {pct(latencies, 50) * 1000:.1f} ms, "
                  f"p99 {pct(latencies, 99) * 1000:.1f} ms  ({args.cycles} claims, no simulated bind delay)")

            SimKernel(Path(tmp) / "sim").set_default_bind_delay(0.5)
            claims = [bench.claim(d) for d in devices[:8]]
            t = time.monotonic()
            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(lambda c: bench.kubelet.prepare(DRIVER, [c])[c[2]], claims))
            wall = time.monotonic() - t
            assert all(not r.error for r in results), [r.error for r in results]
            print(f"8 concurrent prepares, 8 GPUs:    {wall:.2f} s  (0.5 s bind each; target < 1.2 s, "
                  "a node-wide lock would take 4 s)")
            bench.kubelet.unprepare(DRIVER, claims)
            SimKernel(Path(tmp) / "sim").set_default_bind_delay(0.0)

            print(f"plugin RSS:                       {bench.rss_mb():.0f} MB  (target < 130 MB; a bare interpreter "
                  f"with the kubernetes client: {k_mb:.0f} MB)")
            time.sleep(2)  # let the unprepare-driven slice update settle
            bench.server.reset_audit()
            time.sleep(args.steady_seconds)
            writes = bench.server.writes()
            print(f"API writes in {args.steady_seconds:.0f} s of steady state: {writes}  (target 0; "
                  "rescans every 5 s during the window)")
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
