"""The pod start path with and without binding conditions, on the real control plane, with 0.5 s simulated binds.

Run from the repository root: `python benchmarks/bind_start.py [PODS] [BIND_SECONDS]` (default 5 pods, 0.5 s). It
starts the real control plane of the test tier (etcd, kube-apiserver, kube-scheduler, kube-controller-manager built
from their Go modules, cached), installs the chart with `binding.conditions` on, and runs the real plugin process on a
simulated DGX H100 whose every bind to vfio-pci takes BIND_SECONDS. Per mode (the plugin restarted with
`[binding] conditions = false`, then `true`), pods are started one after another; for each it measures, from the pod's
creation: when the scheduler bound it (spec.nodeName), and when NodePrepareResources answered, called by the kubelet
double the moment the pod is bound (a kubelet reacts within its sync loop; that delay is left out of both modes).

It prints per mode the medians of: creation -> bound, the prepare call itself (the kubelet's critical path), and
creation -> prepared; then the share of bind time moved out of the kubelet's critical path and the change in the
total. The scheduler checks binding conditions every 5 s (PreBind's poll), which is what the total pays.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cc_gpu.dra import podgate  # noqa: E402
from cc_gpu.dra.bindlabel import ClaimLabeler  # noqa: E402
from cc_gpu.host.sim.kernel import SimKernel  # noqa: E402
from cc_gpu.kube.client import KubernetesApi  # noqa: E402
from tests.cluster import chart  # noqa: E402
from tests.cluster.chart import NAMESPACE, TENANT_LABEL  # noqa: E402
from tests.cluster.controlplane import ControlPlane, write_kubeconfig  # noqa: E402
from tests.cluster.plugin_node import DRIVER, SNP, VFIO_CLASS, PluginNode, plugin_node  # noqa: E402

NODE = "bench-a"
TENANT = "bench"
VALUES = {"runtimeClasses": {"create": True}, "binding": {"conditions": True, "quarantine": True,
                                                          "quarantineSeconds": 300}}


def pod_start(plane: ControlPlane, node: PluginNode, gate: KubernetesApi, name: str) -> dict[str, float]:
    base = f"/apis/resource.k8s.io/v1/namespaces/{TENANT}"
    plane.admin.create(f"{base}/resourceclaimtemplates", {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": VFIO_CLASS}}]}}},
    })
    start = time.perf_counter()
    plane.admin.create(f"/api/v1/namespaces/{TENANT}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": TENANT},
        "spec": {"runtimeClassName": SNP, "nodeSelector": {"kubernetes.io/hostname": NODE},
                 "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": name}],
                 "containers": [{"name": "vm", "image": "registry.example/vm:1",
                                 "resources": {"claims": [{"name": "gpu"}]}}]},
    })
    while True:
        podgate.release_all(gate)  # the chart's pod-gate controller, run inline
        pod = plane.admin.get(f"/api/v1/namespaces/{TENANT}/pods/{name}")
        if pod["spec"].get("nodeName"):
            break
        if time.perf_counter() - start > 300:
            raise SystemExit(f"pod {name} not bound after 300 s:\n{node.log()}")
        time.sleep(0.02)
    bound = time.perf_counter()
    claim_name = pod["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    claim = plane.admin.get(f"{base}/resourceclaims/{claim_name}")
    ref = (TENANT, claim_name, claim["metadata"]["uid"])
    result = node.kubelet.prepare(DRIVER, [ref])[ref[2]]
    prepared = time.perf_counter()
    if result.error:
        raise SystemExit(f"prepare failed: {result.error}\n{node.log()}")
    node.kubelet.unprepare(DRIVER, [ref])
    plane.admin("DELETE", f"/api/v1/namespaces/{TENANT}/pods/{name}?gracePeriodSeconds=0")
    return {"bound": bound - start, "prepare": prepared - bound, "total": prepared - start}


def set_conditions(node: PluginNode, on: bool) -> None:
    path = node.root / "plugin.toml"
    text = path.read_text()
    path.write_text(text.replace(f"conditions = {str(not on).lower()}", f"conditions = {str(on).lower()}"))


def main(argv: list[str]) -> int:
    logging.getLogger("cc_gpu.dra.podgate").setLevel(logging.ERROR)  # a release pass that lost a race retries
    pods = int(argv[0]) if argv else 5
    bind_s = float(argv[1]) if len(argv) > 1 else 0.5
    with tempfile.TemporaryDirectory() as tmp, ControlPlane.start(Path(tmp) / "plane") as plane:
        release = chart.install(plane, values=VALUES)
        plane.ensure_namespace(TENANT, {TENANT_LABEL: "true"})
        token = plane.admin.create(
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/cc-gpu-pod-gate/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
        write_kubeconfig(Path(tmp) / "gate", plane.url, plane.ca_file, token=token["status"]["token"])
        gate = KubernetesApi(Path(tmp) / "gate")
        stop = threading.Event()  # the chart's pod-gate Deployment's claim labeler, run inline with its token
        labeler = threading.Thread(target=ClaimLabeler(gate, DRIVER).run, args=(stop,), daemon=True)
        labeler.start()
        rows: dict[bool, list[dict[str, float]]] = {}
        with plugin_node(plane, release, Path(tmp) / NODE, NODE) as node:
            for on in (False, True):
                set_conditions(node, on)
                node.start()
                node.wait_published(lambda s, on=on: all(  # type: ignore[misc]
                    ("bindingConditions" in d) == on for x in s for d in x["spec"].get("devices") or []))
                SimKernel(node.sim_root).set_default_bind_delay(bind_s)
                rows[on] = [pod_start(plane, node, gate, f"p{int(on)}-{i}") for i in range(pods)]
                node.stop()
        stop.set()
        labeler.join(timeout=15)
        gate.close()

    def med(on: bool, key: str) -> float:
        return statistics.median(r[key] for r in rows[on])

    print(f"pod start path, {pods} pods per mode, {bind_s:.2f} s simulated binds (medians, seconds)")
    print(f"{'binding conditions':<20} {'create->bound':>14} {'prepare call':>13} {'create->prepared':>17}")
    for on in (False, True):
        print(f"{'on' if on else 'off':<20} {med(on, 'bound'):>14.2f} {med(on, 'prepare'):>13.3f} "
              f"{med(on, 'total'):>17.2f}")
    moved = (med(False, "prepare") - med(True, "prepare")) / med(False, "prepare")
    print(f"bind time moved out of the kubelet's critical path: {100 * moved:.0f}% of the prepare call "
          f"({med(False, 'prepare'):.3f} s -> {med(True, 'prepare'):.3f} s)")
    print(f"total, creation to prepared: {med(True, 'total') / med(False, 'total'):.2f}x with binding conditions "
          f"({med(True, 'total') - med(False, 'total'):+.2f} s): the scheduler's 5 s condition poll")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
