"""cc-gpu's kubelet plugin beside a Go DRA plugin on the upstream helper library, on one real control plane.

    python benchmarks/real_apiserver.py [--claims 60] [--starts 3]

One real kube-apiserver, etcd and kube-controller-manager (tests/cluster/controlplane.py, built from their Go
modules), one Node, one kubelet double (cc_gpu/dra/kubelet.py: registration and NodePrepareResources over real gRPC)
that both plugins register with. The two plugins:

- **cc-gpu**: `cc-gpu plugin --sim dgx-h100` (8 simulated H100s in CC mode, as benchmarks/plugin.py runs it),
  authenticated as the chart runs it: the chart is installed with Helm, and the plugin holds a token of the chart's
  ServiceAccount bound to a Pod on the Node, so real RBAC and the chart's admission policies decide every call.
- **peer**: benchmarks/peer/, a minimal Go DRA kubelet plugin of this project's own on
  `k8s.io/dynamic-resource-allocation/kubeletplugin` v0.37.2 (the helper every Go DRA driver uses), 8 simulated
  devices, a CDI spec file and a checkpoint per prepare, its ResourceSlice published by the helper's
  PublishResources. It holds a pod-bound token of its own ServiceAccount, with the reference example driver's
  chart's rules for what it does (get claims and nodes, resourceslices). (Why not `sigs.k8s.io/dra-example-driver`
  itself: see the README's Benchmarks section.)

Measured, for each, in the same run:
- **start-to-published**: from spawning the process to its ResourceSlice readable on the server (a keep-alive
  GET every 5 ms), and to its registration with the kubelet double; `--starts` times, alternating the two, with the
  slices deleted before each start so every start publishes afresh.
- **NodePrepareResources / NodeUnprepareResources latency** p50/p99 over `--claims` claims, one claim a call,
  the two plugins' cycles interleaved. Each claim is created and allocated by the benchmark as cluster admin (it
  writes `status.allocation`, with the DeviceClass's opaque config copied in as kube-scheduler does, and
  `reservedFor` a Pod on the Node): the benchmark measures the node side, and an admin write keeps the scheduler's
  time out of the figures. At the end it reads back the `Ready` condition cc-gpu wrote on its last claim.
- RSS of each plugin process at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cc_gpu.dra.kubelet import KubeletDouble  # noqa: E402
from cc_gpu.host.sim import create_sim_host  # noqa: E402
from tests.cluster import chart  # noqa: E402
from tests.cluster.build import BuildError, cache_root, go_binary  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402

NODE = "bench-node"
CC_DRIVER = "gpu.cc-gpu.io"
CC_CLASS = "vfio.gpu.cc-gpu.io"
PEER_DRIVER = "gpu.example.com"
PEER_NS = "dra-peer"
PEER_SA = "dra-peer"
TENANT = "bench-tenant"
SNP = "kata-qemu-nvidia-gpu-snp"
PEER_MODULE = REPO / "benchmarks" / "peer"
RG = "/apis/resource.k8s.io/v1"


# -- the Go peer, built from its module once per machine -------------------------------------------------------------

def build_peer() -> Path:
    """The peer binary, cached under CC_GPU_CACHE keyed by its module files and the Go version."""
    go = go_binary()
    version = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, GOTOOLCHAIN="local")).stdout.strip()
    digest = hashlib.sha256(version.encode())
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update(name.encode() + b"\0" + (PEER_MODULE / name).read_bytes())
    target = cache_root().parent / "drapeer" / digest.hexdigest()[:16] / "drapeer"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"building the Go peer with {go} (once per machine; cached in {target.parent})", file=sys.stderr)
    result = subprocess.run([str(go), "build", "-trimpath", "-o", str(target) + ".partial", "."], cwd=PEER_MODULE,
                            env=dict(os.environ, GOFLAGS="-mod=readonly", GOTOOLCHAIN="local"),
                            capture_output=True, text=True, check=False, timeout=1800)
    if result.returncode != 0:
        raise BuildError(f"building benchmarks/peer failed:\n{result.stderr[-4000:]}")
    Path(str(target) + ".partial").rename(target)
    print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return target


# -- a keep-alive reader, so polling measures the server and not a TLS handshake per GET ---------------------------

class Reader:
    def __init__(self, plane: ControlPlane) -> None:
        context = ssl.create_default_context(cafile=str(plane.ca_file))
        context.load_cert_chain(str(plane.pki.admin.cert), str(plane.pki.admin.key))
        self.conn = http.client.HTTPSConnection("127.0.0.1", plane.port, context=context, timeout=10)

    def get(self, path: str) -> Any:
        self.conn.request("GET", path, headers={"Accept": "application/json"})
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:500]!r}")
        return json.loads(body)

    def slices(self, driver: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(
            f"{RG}/resourceslices?fieldSelector=spec.driver%3D{driver},spec.nodeName%3D{NODE}")["items"]
        return items


# -- one plugin under test -------------------------------------------------------------------------------------------

@dataclass
class Plugin:
    label: str
    driver: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    published: list[float] = field(default_factory=list)
    registered: list[float] = field(default_factory=list)
    prepare: list[float] = field(default_factory=list)
    unprepare: list[float] = field(default_factory=list)

    def start(self, reader: Reader, kubelet: KubeletDouble) -> None:
        seen = kubelet.registrations if self.driver in kubelet.plugins else -1
        start = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=log,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = start + 60
        while not reader.slices(self.driver):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not publish (exit {self.proc.poll()}):\n{tail(self.log)}")
            time.sleep(0.005)
        self.published.append(time.monotonic() - start)
        while not (self.driver in kubelet.plugins and kubelet.registrations > seen):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not register: {kubelet.refused}\n{tail(self.log)}")
            time.sleep(0.005)
        self.registered.append(time.monotonic() - start)

    def stop(self, kubelet: KubeletDouble) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self.driver in kubelet.plugins:
            kubelet.wait_deregistered(self.driver, timeout=20)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


# -- the cluster side ------------------------------------------------------------------------------------------------

def setup_cluster(plane: ControlPlane, root: Path) -> tuple[Path, Path]:
    """Chart installed, namespaces, the peer's RBAC and DeviceClass; returns (cc-gpu kubeconfig, peer kubeconfig)."""
    admin = plane.admin
    plane.create_node(NODE)
    chart.install(plane, values={"runtimeClasses": {"create": True}})
    plane.ensure_namespace(TENANT, {chart.TENANT_LABEL: "true"})
    plane.ensure_namespace(PEER_NS)
    # The reference example driver's chart's rules for what the peer does (it reads no pods, writes no status).
    admin.create("/api/v1/namespaces/" + PEER_NS + "/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": PEER_SA, "namespace": PEER_NS}})
    admin.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": PEER_SA},
        "rules": [
            {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        ]})
    admin.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": PEER_SA},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PEER_SA},
        "subjects": [{"kind": "ServiceAccount", "name": PEER_SA, "namespace": PEER_NS}]})
    admin.create(f"{RG}/deviceclasses", {
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": PEER_DRIVER},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{PEER_DRIVER}"'}}]}})
    cc = plane.pod_token_kubeconfig(chart.NAMESPACE, chart.SERVICE_ACCOUNT, f"cc-gpu-plugin-{NODE}",
                                    root / "cc-gpu.kubeconfig", NODE)
    peer = plane.pod_token_kubeconfig(PEER_NS, PEER_SA, f"dra-peer-{NODE}", root / "peer.kubeconfig", NODE)
    return cc, peer


class Claims:
    """Claims allocated by the benchmark as cluster admin, each reserved for its own Pod on the Node."""

    def __init__(self, plane: ControlPlane) -> None:
        self.admin = plane.admin
        self.n = 0
        self.classes: dict[str, list[dict[str, Any]]] = {}

    def class_config(self, name: str) -> list[dict[str, Any]]:
        if name not in self.classes:
            self.classes[name] = self.admin.get(f"{RG}/deviceclasses/{name}")["spec"].get("config") or []
        return self.classes[name]

    def make(self, namespace: str, device_class: str, driver: str, device: str) -> tuple[str, str, str]:
        self.n += 1
        name = f"c-{self.n}"
        pod = self.admin.create(f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"vm-{self.n}", "namespace": namespace},
            "spec": {"nodeName": NODE, "runtimeClassName": SNP,
                     "containers": [{"name": "main", "image": "registry.example/workload:1"}]}})
        claim = self.admin.create(f"{RG}/namespaces/{namespace}/resourceclaims", {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": device_class}}]}}})
        # The class's opaque config goes into the allocation as kube-scheduler copies it (source FromClass).
        config = [{"source": "FromClass", "requests": ["gpu"], "opaque": c["opaque"]}
                  for c in self.class_config(device_class)]
        claim["status"] = {
            "allocation": {
                "devices": {"results": [{"request": "gpu", "driver": driver, "pool": NODE, "device": device}],
                            **({"config": config} if config else {})},
                "nodeSelector": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE]}]}]},
            },
            "reservedFor": [{"resource": "pods", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}],
        }
        # Compact JSON, as kube-scheduler (a Go client) sends it: the server keeps the opaque parameters' bytes as sent.
        body = json.dumps(claim, separators=(",", ":")).encode()
        self.admin("PUT", f"{RG}/namespaces/{namespace}/resourceclaims/{name}/status", body).ok()
        return namespace, name, str(claim["metadata"]["uid"])


def ready(plane: ControlPlane, claims: Claims) -> str:
    """The `Ready` condition cc-gpu wrote into the newest cc-gpu claim's status.devices, or why there is none."""
    for n in range(claims.n, 0, -1):
        reply = plane.admin("GET", f"{RG}/namespaces/{TENANT}/resourceclaims/c-{n}")
        if reply.code == 200:
            for device in (reply.body.get("status") or {}).get("devices") or []:
                for condition in device.get("conditions") or []:
                    if condition.get("type") == "Ready":
                        return f"{condition['status']} ({condition.get('reason')})"
            return "missing"
    return "no cc-gpu claim found"


def delete_slices(plane: ControlPlane, reader: Reader, driver: str) -> None:
    for item in reader.slices(driver):
        plane.admin("DELETE", f"{RG}/resourceslices/{item['metadata']['name']}").ok()
    plane.wait_for(f"{driver}'s slices to be gone", lambda: not reader.slices(driver), timeout=30, interval=0.05)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    t = time.monotonic()
    result = call()
    return time.monotonic() - t, result


# -- main ------------------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=60, help="claims prepared and unprepared per plugin")
    parser.add_argument("--starts", type=int, default=3, help="cold starts per plugin")
    args = parser.parse_args()
    try:
        peer_binary = build_peer()
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="cc-gpu-bench-real-", dir="/tmp") as tmp:
        root = Path(tmp)
        plane = ControlPlane.start(root / "cluster", scheduler=False)
        kubelet = KubeletDouble(root / "registry")
        plugins: list[Plugin] = []
        try:
            cc_kubeconfig, peer_kubeconfig = setup_cluster(plane, root)
            kubelet.start()
            reader = Reader(plane)
            create_sim_host("dgx-h100", root / "sim", state=root / "cc-gpu" / "host-state")
            cc = Plugin("cc-gpu", CC_DRIVER, [
                sys.executable, "-m", "cc_gpu", "plugin", "--node-name", NODE, "--sim", "dgx-h100",
                "--sim-root", str(root / "sim"), "--kubeconfig", str(cc_kubeconfig),
                "--plugin-dir", str(root / "cc-gpu"), "--registry-dir", str(root / "registry"),
                "--cdi-root", str(root / "cdi-cc"), "--log-level", "warning"], root / "cc-gpu.log")
            peer = Plugin("peer", PEER_DRIVER, [
                str(peer_binary), "--node-name", NODE, "--kubeconfig", str(peer_kubeconfig),
                "--plugin-dir", str(root / "peer"), "--registry-dir", str(root / "registry"),
                "--cdi-root", str(root / "cdi-peer"), "--v=0"], root / "peer.log")
            plugins = [cc, peer]

            for i in range(args.starts):
                for p in plugins:
                    delete_slices(plane, reader, p.driver)
                    p.start(reader, kubelet)
                    if i < args.starts - 1:
                        p.stop(kubelet)

            claims = Claims(plane)
            devices = {p.driver: [d["name"] for d in reader.slices(p.driver)[0]["spec"]["devices"]] for p in plugins}
            where = {CC_DRIVER: (TENANT, CC_CLASS), PEER_DRIVER: (PEER_NS, PEER_DRIVER)}
            for i in range(args.claims):
                for p in plugins:
                    namespace, device_class = where[p.driver]
                    claim = claims.make(namespace, device_class, p.driver, devices[p.driver][i % 8])
                    seconds, result = timed(lambda: kubelet.prepare(p.driver, [claim]))  # noqa: B023
                    error = result[claim[2]].error
                    if error:
                        raise RuntimeError(f"{p.label} failed to prepare {claim[1]}: {error}\n{tail(p.log)}")
                    p.prepare.append(seconds)
                    seconds, errors = timed(lambda: kubelet.unprepare(p.driver, [claim]))  # noqa: B023
                    if errors[claim[2]]:
                        raise RuntimeError(f"{p.label} failed to unprepare {claim[1]}: {errors[claim[2]]}")
                    p.unprepare.append(seconds)
            rss = {p.label: p.rss_mb() for p in plugins}
            report(cc, peer, rss, args)
            print(f"  cc-gpu's Ready condition on the last claim, as the server stores it: {ready(plane, claims)}")
            warnings = [line for line in cc.log.read_text(errors="replace").splitlines() if '"warning"' in line]
            print(f"  cc-gpu warnings logged: {len(warnings)}" + "".join(f"\n    {w[:300]}" for w in warnings[:3]))
        finally:
            for p in plugins:
                p.stop(kubelet)
            kubelet.stop()
            plane.stop()
    return 0


def report(cc: Plugin, peer: Plugin, rss: dict[str, float], args: argparse.Namespace) -> None:
    def ms(v: float) -> str:
        return f"{v * 1000:7.1f} ms"

    def row(what: str, a: float, b: float) -> None:
        print(f"  {what:<28} cc-gpu {ms(a)}   peer {ms(b)}   ratio {a / b:5.1f}x")

    print("one real kube-apiserver; one kubelet double; cc-gpu --sim dgx-h100 vs the Go peer on kubeletplugin "
          "v0.37.2 (8 simulated devices each)")
    print(f"start-to-published ({args.starts} cold starts each; median, all values in s: "
          f"cc-gpu {[round(v, 2) for v in cc.published]}, peer {[round(v, 2) for v in peer.published]})")
    row("to slice readable", statistics.median(cc.published), statistics.median(peer.published))
    row("to registered with kubelet", statistics.median(cc.registered), statistics.median(peer.registered))
    print(f"NodePrepareResources, one claim a call ({args.claims} claims each, interleaved)")
    row("prepare p50", pct(cc.prepare, 50), pct(peer.prepare, 50))
    row("prepare p99", pct(cc.prepare, 99), pct(peer.prepare, 99))
    row("unprepare p50", pct(cc.unprepare, 50), pct(peer.unprepare, 50))
    row("unprepare p99", pct(cc.unprepare, 99), pct(peer.unprepare, 99))
    print(f"  {'RSS at the end':<28} cc-gpu {rss['cc-gpu']:7.0f} MB   peer {rss['peer']:7.0f} MB   ratio "
          f"{rss['cc-gpu'] / rss['peer']:5.1f}x")


if __name__ == "__main__":
    raise SystemExit(main())
