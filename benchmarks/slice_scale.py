"""Many nodes publishing ResourceSlices to one real kube-apiserver: convergence time, writes per node, server cost.

Run from the repository root: `python benchmarks/slice_scale.py [N ...]` (default: 50 100 200). It starts the real
control plane of the test tier (tests/cluster/controlplane.py: etcd and kube-apiserver built from their Go modules,
cached), creates N Nodes, and runs N slice publishers (`cc_gpu.dra.slices.SlicePublisher`, the plugin's own code,
8 simulated H100s each) inside this one process over one client, 8 threads wide: 200 plugin processes would not fit
in this machine's memory, and the publisher, not the process, is what the API server sees.

Per N it prints: time until every node's pool is published (converged), the writes the server counted
(`apiserver_request_total`) per node at publish (target 1) and over 3 full rescans of every node afterwards
(target 0), the time one rescan of all nodes takes, and the CPU seconds and RSS of kube-apiserver and etcd during
each phase. The growth line divides each per-N cost by N: flat means linear cost in the number of nodes.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cc_gpu.dra.ports import GpuView  # noqa: E402
from cc_gpu.dra.slices import NodeRef, SlicePublisher  # noqa: E402
from cc_gpu.kube.client import KubernetesApi  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from tests.cluster.plugin_node import slice_writes  # noqa: E402

DRIVER = "gpu.cc-gpu.io"
GPUS = 8
THREADS = 8
RESCANS = 3
TICKS = 100  # clock ticks per second on Linux


def gpus(node: int) -> list[GpuView]:
    out = []
    for i in range(GPUS):
        bdf = f"0000:{0x18 + i * 0x10:02x}:00.0"
        out.append(
            GpuView(
                name="gpu-" + bdf.replace(":", "-").replace(".", "-"),
                bdf=bdf,
                gpus=(bdf,),
                members=(bdf,),
                iommu_group=10 + i,
                vendor_id="0x10de",
                device_id="0x2330",
                product_name="NVIDIA H100 80GB HBM3",
                architecture="hopper",
                numa_node=i // 4,
                pcie_root=f"pci0000:{i:02x}",
                iommufd=True,
                cc_capable=True,
                cc_mode="on",
                driver="nvidia",
                memory_bytes=80 * 2**30,
                attributes={"uuid": {"string": f"GPU-{node:08x}-{i:04x}"}},
            )
        )
    return out


@dataclass
class Usage:
    cpu_s: float
    rss_mb: float


def usage(pid: int) -> Usage:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    rss = (
        next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        / 1024
    )
    return Usage(cpu, rss)


def run(plane: ControlPlane, api: KubernetesApi, n: int, prefix: str) -> dict[str, float]:
    pids = {p.name: p.popen.pid for p in plane.processes if p.name in ("kube-apiserver", "etcd")}
    refs = []
    for i in range(n):
        node = plane.create_node(f"{prefix}-{i:04d}")
        refs.append(NodeRef(node["metadata"]["name"], node["metadata"]["uid"]))
    publishers = [SlicePublisher(api, DRIVER, ref) for ref in refs]
    inventories = [gpus(i) for i in range(n)]

    def phase(label: str) -> tuple[float, int, dict[str, Usage]]:
        before = {k: usage(p) for k, p in pids.items()}
        writes = slice_writes(plane)
        start = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda pair: pair[0].publish(pair[1]), zip(publishers, inventories, strict=True)))
        seconds = time.perf_counter() - start
        after = {k: usage(p) for k, p in pids.items()}
        spent = {k: Usage(after[k].cpu_s - before[k].cpu_s, after[k].rss_mb) for k in pids}
        return seconds, slice_writes(plane) - writes, spent

    converge_s, publish_writes, publish_use = phase("publish")
    rescans = [phase("rescan") for _ in range(RESCANS)]
    listed = api_count(plane, prefix)
    return {
        "n": n,
        "converge_s": converge_s,
        "writes_per_node_publish": publish_writes / n,
        "writes_steady": sum(r[1] for r in rescans),
        "rescan_s": statistics.median(r[0] for r in rescans),
        "apiserver_cpu_publish_s": publish_use["kube-apiserver"].cpu_s,
        "apiserver_cpu_rescan_s": statistics.median(r[2]["kube-apiserver"].cpu_s for r in rescans),
        "etcd_cpu_publish_s": publish_use["etcd"].cpu_s,
        "apiserver_rss_mb": rescans[-1][2]["kube-apiserver"].rss_mb,
        "etcd_rss_mb": rescans[-1][2]["etcd"].rss_mb,
        "slices": listed,
    }


def api_count(plane: ControlPlane, prefix: str) -> int:
    items = plane.admin.get(f"/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.driver={DRIVER}")["items"]
    return sum(1 for s in items if s["spec"]["nodeName"].startswith(prefix))


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [50, 100, 200]
    with (
        tempfile.TemporaryDirectory() as tmp,
        ControlPlane.start(Path(tmp), scheduler=False, controller_manager=False) as plane,
    ):
        api = KubernetesApi(plane.admin_kubeconfig, user_agent="cc-gpu-bench")
        print(
            f"{'N':>5} {'converge':>9} {'writes/node':>11} {'steady':>6} {'rescan':>8} {'api CPU pub':>11} "
            f"{'api CPU rescan':>14} {'etcd CPU pub':>12} {'api RSS':>8} {'etcd RSS':>8}"
        )
        rows = []
        for k, n in enumerate(sizes):
            row = run(plane, api, n, f"scale{k}")
            assert row["slices"] == n, row
            rows.append(row)
            print(
                f"{n:>5} {row['converge_s']:>8.2f}s {row['writes_per_node_publish']:>11.2f} "
                f"{row['writes_steady']:>6.0f} {row['rescan_s']:>7.2f}s {row['apiserver_cpu_publish_s']:>10.2f}s "
                f"{row['apiserver_cpu_rescan_s']:>13.2f}s {row['etcd_cpu_publish_s']:>11.2f}s "
                f"{row['apiserver_rss_mb']:>6.0f}MB {row['etcd_rss_mb']:>6.0f}MB",
                flush=True,
            )
        print(
            "per node (growth): "
            + ", ".join(
                f"N={r['n']}: publish {1000 * r['converge_s'] / r['n']:.1f} ms, "
                f"rescan {1000 * r['rescan_s'] / r['n']:.1f} ms, "
                f"apiserver {1000 * r['apiserver_cpu_publish_s'] / r['n']:.1f} ms CPU"
                for r in rows
            )
        )
        api.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
