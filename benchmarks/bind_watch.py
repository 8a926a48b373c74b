"""What it costs that every node's plugin watches every ResourceClaim (binding conditions), on the real kube-apiserver.

Run from the repository root: `python benchmarks/bind_watch.py [N] [CLAIMS]` (default: the scale benchmark's largest
N, 200 nodes, and 200 claims). ResourceClaims have no field selector for the node a claim is allocated on, so with
binding conditions on each plugin lists and watches all claims (`cc_gpu.dra.binding`). This starts the real control
plane of the test tier (etcd and kube-apiserver built from their Go modules, cached), opens W watches of all claims
with the plugin's own client call (`KubernetesApi.watch_resource_claims`, one client and connection per watcher, as
one per node), and drives CLAIMS claims through a lifecycle like the scheduler's (create; allocation with binding
conditions and reservation written to status; a device condition; delete: four events each) while it measures the
kube-apiserver's and etcd's CPU seconds and the watch events delivered, for W = 0 (no watcher), W = 1 (the peer: one
cluster-level watcher that would fan work out per node) and W = N (every node watching).

It prints per W: API server CPU for the churn, events delivered, and the decoding CPU the watchers spent per node
(this process's CPU over N, the part each node's plugin pays), and the ratios of W = N to W = 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cc_gpu.kube.client import KubernetesApi  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402

DRIVER = "gpu.cc-gpu.io"
TICKS = 100
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims"


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def claim(name: str) -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vfio.gpu.cc-gpu.io"}}]}}}


def churn(plane: ControlPlane, prefix: str, count: int, nodes: int) -> None:
    """Each claim as the scheduler and a plugin would write it: create, allocate + reserve, condition, delete."""
    admin = plane.admin
    for i in range(count):
        node = f"node-{i % nodes:04d}"
        created = admin.create(CLAIMS, claim(f"{prefix}-{i}"))
        created["status"] = {
            "allocation": {
                "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": node, "device": "gpu-0",
                                         "bindingConditions": ["VfioReady"],
                                         "bindingFailureConditions": ["VfioFailed"]}]},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [node]}]}]},
                "allocationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "reservedFor": [{"resource": "pods", "name": f"pod-{i}", "uid": f"00000000-0000-0000-0000-{i:012d}"}],
        }
        stored = admin("PUT", f"{CLAIMS}/{prefix}-{i}/status", created).ok()
        stored["status"]["devices"] = [{"driver": DRIVER, "pool": node, "device": "gpu-0", "conditions": [
            {"type": "VfioReady", "status": "True", "reason": "BoundToVfio", "message": "",
             "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}]
        admin("PUT", f"{CLAIMS}/{prefix}-{i}/status", stored).ok()
        admin("DELETE", f"{CLAIMS}/{prefix}-{i}").ok()


class Watchers:
    """W watchers of all claims, each as one node's plugin: its own client, list, then watch from the version."""

    def __init__(self, plane: ControlPlane, count: int) -> None:
        self.apis = [KubernetesApi(plane.admin_kubeconfig, user_agent=f"cc-gpu-bench-{i}") for i in range(count)]
        self.events = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Barrier(count + 1) if count else None
        self.threads = [threading.Thread(target=self._run, args=(api, i), daemon=True)
                        for i, api in enumerate(self.apis)]
        for t in self.threads:
            t.start()
        if self.ready is not None:
            self.ready.wait()

    def _run(self, api: KubernetesApi, index: int) -> None:
        _, version = api.watchable_resource_claims()
        assert self.ready is not None
        self.ready.wait()
        pool = f"node-{index:04d}"
        while not self.stop.is_set():
            for event in api.watch_resource_claims(version, 5):
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                results = (((obj.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results")
                _ = [r for r in results or [] if r.get("pool") == pool]  # the plugin's filter
                with self.lock:
                    self.events += event["type"] != "BOOKMARK"

    def wait_for(self, events: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.events < events and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        for api in self.apis:
            api.close()


def measure(plane: ControlPlane, watchers: int, claims: int, nodes: int, prefix: str) -> dict[str, float]:
    api_pid = next(p.popen.pid for p in plane.processes if p.name == "kube-apiserver")
    etcd_pid = next(p.popen.pid for p in plane.processes if p.name == "etcd")
    group = Watchers(plane, watchers)
    time.sleep(1)
    api0, etcd0, me0, t0 = cpu(api_pid), cpu(etcd_pid), time.process_time(), time.perf_counter()
    churn(plane, prefix, claims, nodes)
    group.wait_for(4 * claims * watchers)
    seconds = time.perf_counter() - t0
    row = {"w": watchers, "api_cpu": cpu(api_pid) - api0, "etcd_cpu": cpu(etcd_pid) - etcd0,
           "events": group.events, "client_cpu": time.process_time() - me0, "seconds": seconds}
    group.close()
    return row


def main(argv: list[str]) -> int:
    nodes = int(argv[0]) if argv else 200
    claims = int(argv[1]) if len(argv) > 1 else 200
    with (
        tempfile.TemporaryDirectory() as tmp,
        ControlPlane.start(Path(tmp), scheduler=False, controller_manager=False) as plane,
    ):
        rows = [measure(plane, w, claims, nodes, f"w{w}") for w in (0, 1, nodes)]
    base = rows[0]
    print(f"{claims} claims, 4 events each, N = {nodes} nodes; CPU seconds on {os.cpu_count()} cores")
    print(f"{'watchers':>8} {'api CPU':>8} {'+ over none':>11} {'etcd CPU':>8} {'events':>8} "
          f"{'decode CPU/node':>15} {'wall':>7}")
    for r in rows:  # this process's CPU beyond the churn's own (W = 0), per watcher
        per_node = (r["client_cpu"] - base["client_cpu"]) / r["w"] if r["w"] else 0.0
        print(f"{r['w']:>8} {r['api_cpu']:>7.2f}s {r['api_cpu'] - base['api_cpu']:>10.2f}s {r['etcd_cpu']:>7.2f}s "
              f"{r['events']:>8.0f} {1000 * per_node:>13.1f}ms {r['seconds']:>6.1f}s")
    one, every = rows[1], rows[2]
    extra_one = one["api_cpu"] - base["api_cpu"]
    extra_all = every["api_cpu"] - base["api_cpu"]
    print(f"API server CPU added by the watches, per claim: one watcher {1000 * extra_one / claims:+.1f} ms, "
          f"every node {1000 * extra_all / claims:+.1f} ms ({1000 * extra_all / claims / nodes:.2f} ms per claim "
          f"per watching node); the churn's own writes cost {1000 * base['api_cpu'] / claims:.1f} ms per claim; "
          f"events delivered {every['events'] / max(1, one['events']):.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
