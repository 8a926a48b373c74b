"""What the binding-condition claim watch costs the real kube-apiserver: every node watching every ResourceClaim, or
each node watching only the claims the cluster's labeler marked with its node.

Run from the repository root: `python benchmarks/bind_watch.py [N] [CLAIMS]` (default: the scale benchmark's largest
N, 200 nodes, and 200 claims). ResourceClaims have no field selector for the node a claim is allocated on, so with
binding conditions on each plugin lists and watches all claims (`cc_gpu.dra.binding`). This starts the real control
plane of the test tier (etcd and kube-apiserver built from their Go modules, cached), opens W watches of all claims
with the plugin's own client call (`KubernetesApi.watch_resource_claims`, one client and connection per watcher, as
one per node), and drives CLAIMS claims through a lifecycle like the scheduler's (create; allocation with binding
conditions and reservation written to status; a device condition; delete: four events each) while it measures the
kube-apiserver's and etcd's CPU seconds and the watch events delivered, for: no watcher; one unfiltered watcher (the
cluster-level labeler alone); every node watching every claim (`watch_all`, the design this replaced); and the
design in use: the labeler's one unfiltered watch plus N watches with the label selector
`cc-gpu.io/binding-node=<node>`, where the churn also writes the labeler's label patch (one more write per claim).

It prints per row: API server CPU for the churn beyond the no-watcher baseline, events delivered, and the decoding CPU
the watchers spent per node (this process's CPU over the watchers, the part each node's plugin pays), and the ratio of
the labelled design's API server cost to every node watching.
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

from cc_gpu.dra.bindlabel import LABEL  # noqa: E402
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


def churn(plane: ControlPlane, prefix: str, count: int, nodes: int, label: bool = False) -> None:
    """Each claim as the scheduler and a plugin would write it: create, allocate + reserve, (the labeler's label,)
    condition, delete."""
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
        if label:
            stored["metadata"].setdefault("labels", {})[LABEL] = node
            stored = admin("PUT", f"{CLAIMS}/{prefix}-{i}", stored).ok()
        stored["status"]["devices"] = [{"driver": DRIVER, "pool": node, "device": "gpu-0", "conditions": [
            {"type": "VfioReady", "status": "True", "reason": "BoundToVfio", "message": "",
             "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]}]
        admin("PUT", f"{CLAIMS}/{prefix}-{i}/status", stored).ok()
        admin("DELETE", f"{CLAIMS}/{prefix}-{i}").ok()


class Watchers:
    """Watchers of claims, each as one node's plugin (or the labeler): its own client, list, then watch from the
    version; `selectors[i]` is watcher i's label selector ("" for all claims)."""

    def __init__(self, plane: ControlPlane, selectors: list[str]) -> None:
        count = len(selectors)
        self.selectors = selectors
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
        selector = self.selectors[index]
        _, version = api.watchable_resource_claims(selector)
        assert self.ready is not None
        self.ready.wait()
        pool = f"node-{index:04d}"
        while not self.stop.is_set():
            for event in api.watch_resource_claims(version, 5, selector):
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


def measure(plane: ControlPlane, mode: str, claims: int, nodes: int, prefix: str) -> dict[str, Any]:
    """mode: none | one (the labeler alone) | all (every node unfiltered) | labelled (labeler + N selected)."""
    api_pid = next(p.popen.pid for p in plane.processes if p.name == "kube-apiserver")
    etcd_pid = next(p.popen.pid for p in plane.processes if p.name == "etcd")
    selectors = {"none": [], "one": [""], "all": [""] * nodes,
                 "labelled": [""] + [f"{LABEL}=node-{i:04d}" for i in range(nodes)]}[mode]
    group = Watchers(plane, selectors)
    time.sleep(1)
    api0, etcd0, me0, t0 = cpu(api_pid), cpu(etcd_pid), time.process_time(), time.perf_counter()
    labelled = mode == "labelled"
    churn(plane, prefix, claims, nodes, label=labelled)
    # unfiltered: 4 events per claim (5 with the label); a node's selected watch: label (ADDED), condition, delete
    group.wait_for(claims * (5 + 3) if labelled else 4 * claims * len(selectors))
    seconds = time.perf_counter() - t0
    row = {"mode": mode, "w": len(selectors), "api_cpu": cpu(api_pid) - api0, "etcd_cpu": cpu(etcd_pid) - etcd0,
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
        rows = [measure(plane, mode, claims, nodes, mode) for mode in ("none", "one", "all", "labelled")]
    base = rows[0]
    print(f"{claims} claims, 4 events each (5 with the label), N = {nodes} nodes; "
          f"CPU seconds on {os.cpu_count()} cores")
    print(f"{'watches':>24} {'api CPU':>8} {'+ over none':>11} {'etcd CPU':>8} {'events':>8} "
          f"{'decode CPU/watch':>16} {'wall':>7}")
    names = {"none": "none", "one": "1 unfiltered (labeler)", "all": f"{nodes} unfiltered (nodes)",
             "labelled": f"1 + {nodes} label-selected"}
    for r in rows:  # this process's CPU beyond the churn's own (no watcher), per watch
        per_watch = (r["client_cpu"] - base["client_cpu"]) / r["w"] if r["w"] else 0.0
        print(f"{names[r['mode']]:>24} {r['api_cpu']:>7.2f}s {r['api_cpu'] - base['api_cpu']:>10.2f}s "
              f"{r['etcd_cpu']:>7.2f}s {r['events']:>8.0f} {1000 * per_watch:>14.1f}ms {r['seconds']:>6.1f}s")
    one, every, labelled = rows[1], rows[2], rows[3]
    extra = {k: 1000 * (r["api_cpu"] - base["api_cpu"]) / claims for k, r in
             (("one", one), ("all", every), ("labelled", labelled))}
    print(f"API server CPU added per claim: one unfiltered watch {extra['one']:+.1f} ms; every node unfiltered "
          f"{extra['all']:+.1f} ms; labeler + per-node label-selected watches {extra['labelled']:+.1f} ms (this "
          f"includes the label patch, one write); every node / labelled = "
          f"{extra['all'] / extra['labelled'] if extra['labelled'] > 0 else float('inf'):.1f}x; the churn's own "
          f"writes cost {1000 * base['api_cpu'] / claims:.1f} ms per claim; events delivered: every node "
          f"{every['events']:.0f}, labelled {labelled['events']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
