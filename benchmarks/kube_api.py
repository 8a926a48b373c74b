"""What the Kubernetes layer costs: imports, memory, client set-up, and request latency against the API-server double.

Run from the repository root: `python benchmarks/kube_api.py`. Each import figure comes from a fresh interpreter
(median of several), so nothing is already cached. RSS is the process's peak resident set, `VmHWM`, which starts
afresh at exec (unlike `ru_maxrss`, which a child inherits from the parent it was forked from).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 5

PROBE = """
import json, sys, time
t0 = time.perf_counter()
{body}
elapsed = time.perf_counter() - t0
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
print(json.dumps({{"seconds": elapsed, "rss_mb": int(peak) / 1024}}))
"""

CASES = {
    "python alone": "pass",
    "cc_gpu.kube.api + errors + client (module only)": "import cc_gpu.kube.api, cc_gpu.kube.errors, cc_gpu.kube.client",
    "kubernetes client + config packages": "import kubernetes.client, kubernetes.config",
    "KubernetesApi(kubeconfig) constructed": (
        "from pathlib import Path\nfrom cc_gpu.kube.client import KubernetesApi\nKubernetesApi(Path(sys.argv[1]))"
    ),
    "KubernetesApi + first get_node and list_resource_slices": (
        "from pathlib import Path\nfrom cc_gpu.kube.client import KubernetesApi\n"
        "api = KubernetesApi(Path(sys.argv[1]))\napi.get_node('node-a')\n"
        "api.list_resource_slices('d.example.com', 'node-a')"
    ),
    "(for comparison) KubernetesApi plus the generated CoreV1Api": (
        "from pathlib import Path\nfrom kubernetes import client\nfrom cc_gpu.kube.client import KubernetesApi\n"
        "KubernetesApi(Path(sys.argv[1]))\nclient.CoreV1Api()"
    ),
    "API-server double imported": "import cc_gpu.kube.apiserver",
}


def probe(body: str, kubeconfig: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seconds, rss = [], []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(body=body), str(kubeconfig)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        seconds.append(figures["seconds"])
        rss.append(figures["rss_mb"])
    return statistics.median(seconds), statistics.median(rss)


def latency(label: str, call: object, n: int = 200) -> None:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    samples.sort()
    p50, p99 = samples[n // 2], samples[int(n * 0.99) - 1]
    print(f"  {label:<48} p50 {p50 * 1000:6.2f} ms   p99 {p99 * 1000:6.2f} ms")


def main() -> int:
    sys.path.insert(0, str(REPO))
    from cc_gpu.kube.apiserver import ApiServerDouble  # noqa: PLC0415
    from cc_gpu.kube.apiserver import cluster as c  # noqa: PLC0415
    from cc_gpu.kube.client import KubernetesApi  # noqa: PLC0415

    with ApiServerDouble() as double, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = double.write_kubeconfig(Path(tmp) / "kubeconfig")
        double.create(c.node("node-a"))
        print(f"Import and start-up cost (fresh interpreter, median of {RUNS}):")
        base_s, base_rss = probe("pass", kubeconfig)
        for label, body in CASES.items():
            seconds, rss = probe(body, kubeconfig)
            print(
                f"  {label:<56} {seconds:6.3f} s  (+{seconds - base_s if body != 'pass' else 0:5.3f})"
                f"   RSS {rss:6.1f} MB  (+{max(0.0, rss - base_rss):5.1f})"
            )

        api = KubernetesApi(kubeconfig)
        double.create(c.device_class("gpu", "d.example.com"))
        claim = double.create(c.resource_claim("default", "claim", device_class_name="gpu"))
        pod = double.create(c.pod("default", "p", node_name="node-a", runtime_class_name=None))
        c.allocate(
            double.store, claim, [c.Allocated("gpu", "d.example.com", "node-a", "gpu-0")], [pod], node_name="node-a"
        )
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": "node-a-d"},
            "spec": {
                "driver": "d.example.com",
                "pool": {"name": "node-a", "generation": 1, "resourceSliceCount": 1},
                "nodeName": "node-a",
                "devices": [
                    {"name": f"gpu-{i}", "attributes": {f"a{j}": {"int": j} for j in range(20)}} for i in range(8)
                ],
            },
        }
        api.create_resource_slice(body)
        print("Request latency, production client against the double (200 calls each):")
        latency("get_resource_claim", lambda: api.get_resource_claim("default", "claim"))
        latency("list_resource_slices (field selectors)", lambda: api.list_resource_slices("d.example.com", "node-a"))
        flip = iter(range(10**6))
        latency(
            "patch_resource_claim_status (merge patch)",
            lambda: api.patch_resource_claim_status(
                "default",
                "claim",
                {
                    "metadata": {"labels": None},
                    "status": {
                        "devices": [
                            {"driver": "d.example.com", "pool": "node-a", "device": "gpu-0", "data": {"n": next(flip)}}
                        ]
                    },
                },
            ),
        )
        latency("update_resource_slice (8 devices x 20 attributes)", lambda: _bump(api))
        api.close()
    return 0


def _bump(api: object) -> None:
    current = api.list_resource_slices("d.example.com", "node-a")[0]  # type: ignore[attr-defined]
    current["spec"]["pool"]["generation"] += 1
    api.update_resource_slice(current)  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
