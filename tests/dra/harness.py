"""An end-to-end node for tests: the API-server double, the real plugin process on a simulated host, the kubelet double.

The plugin runs as `python -m cc_gpu plugin ...` in a subprocess, exactly as on a node; the test plays the scheduler
(creates Pods, RuntimeClasses, DeviceClasses and ResourceClaims on the double and writes allocations through the
status subresource over HTTP) and the kubelet (through `KubeletDouble`, over the Unix sockets).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cc_gpu.dra.cdi import POD_ANNOTATION
from cc_gpu.dra.kubelet import KubeletDouble
from cc_gpu.dra.podgate import device_value
from cc_gpu.host.sim import SimKernel
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi

REPO = Path(__file__).resolve().parents[2]
DRIVER = "gpu.cc-gpu.io"
NODE = "node-a"
SNP = "kata-qemu-nvidia-gpu-snp"


def opaque(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", **fields}


@dataclass
class Node:
    root: Path
    server: ApiServerDouble
    api: KubernetesApi
    kubelet: KubeletDouble
    topology: str = "dgx-h100"
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    _n: int = 0

    @property
    def plugin_dir(self) -> Path:
        return self.root / "plugins" / DRIVER

    @property
    def cdi_root(self) -> Path:
        return self.root / "cdi"

    @property
    def sim_root(self) -> Path:
        return self.root / "sim"

    @property
    def kernel(self) -> SimKernel:
        return SimKernel(self.sim_root)

    @property
    def log_path(self) -> Path:
        return self.root / "plugin.log"

    def spawn_plugin(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one plugin process on this node (the same host, API server and directories)."""
        args = [
            sys.executable, "-m", "cc_gpu", "plugin", "--node-name", NODE, "--sim", self.topology,
            "--sim-root", str(self.sim_root), "--kubeconfig", str(self.root / "kubeconfig"),
            "--plugin-dir", str(self.plugin_dir), "--registry-dir", str(self.root / "registry"),
            "--cdi-root", str(self.cdi_root), *self.extra_args, *extra,
        ]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        with self.log_path.open("ab") as log:
            return subprocess.Popen(args, env=full_env, stdout=subprocess.DEVNULL, stderr=log)

    def start_plugin(self, *extra: str, env: dict[str, str] | None = None, wait: bool = True) -> None:
        seen = self.kubelet.registrations
        self.proc = self.spawn_plugin(*extra, env=env)
        if wait:
            try:
                self.kubelet.wait_registered(DRIVER, timeout=30, after=seen)
            except Exception:
                self.proc.kill()
                raise RuntimeError("plugin did not register:\n" + self.log_path.read_text()[-4000:]) from None

    def stop_plugin(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc = None
        if sig == signal.SIGTERM:
            self.kubelet.wait_deregistered(DRIVER)
        return code

    def seed(self) -> None:
        self.server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "labels": {}}})
        for name, handler in ((SNP, SNP), ("kata-qemu-nvidia-gpu-tdx", "kata-qemu-nvidia-gpu-tdx"), ("runc", "runc")):
            self.server.create({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name},
                                "handler": handler})
        self.server.create({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "vfio-gpu"},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
        })

    def pod(self, name: str, runtime_class: str | None = SNP, annotations: dict[str, str] | None = None,
            namespace: str = "default", *, cdi_device: bool = False) -> dict[str, Any]:
        """A pod on the node; `cdi_device` gives it its own per-pod CDI device annotation from the UID the server
        assigned, as the pod-gate controller does on a cluster (cc_gpu/dra/podgate.py)."""
        spec: dict[str, Any] = {"nodeName": NODE, "containers": [{"name": "main", "image": "registry.example/vm:1"}]}
        if runtime_class is not None:
            spec["runtimeClassName"] = runtime_class
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = annotations
        created = self.server.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
        if not cdi_device:
            return created
        created["metadata"].setdefault("annotations", {})[POD_ANNOTATION] = device_value(created["metadata"]["uid"])
        return self.server.store.replace(self.server.store_type("pods", ""), namespace, name, created)

    def claim(
        self,
        name: str,
        devices: list[str],
        pods: list[dict[str, Any]],
        *,
        namespace: str = "default",
        driver: str = DRIVER,
        pool: str = NODE,
        config: list[dict[str, Any]] | None = None,
        admin_access: bool = False,
        reserved_for: list[dict[str, Any]] | None = None,
    ) -> tuple[str, str, str]:
        """Create a claim with one request per device, allocate it as the scheduler would; return (ns, name, uid)."""
        requests = [f"gpu{i}" for i in range(len(devices))]
        spec_devices: dict[str, Any] = {
            "requests": [{"name": r, "exactly": {"deviceClassName": "vfio-gpu"}} for r in requests]
        }
        claim = self.server.create({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"devices": spec_devices},
        })
        results = []
        for r, d in zip(requests, devices, strict=True):
            entry: dict[str, Any] = {"request": r, "driver": driver, "pool": pool, "device": d}
            if admin_access:
                entry["adminAccess"] = True
            results.append(entry)
        allocation: dict[str, Any] = {"devices": {"results": results}, "nodeSelector": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE]}]}]}}
        if config:
            allocation["devices"]["config"] = config
        claim["status"] = {
            "allocation": allocation,
            "reservedFor": reserved_for if reserved_for is not None else [
                {"resource": "pods", "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]} for p in pods
            ],
        }
        self.api.update_resource_claim_status(namespace, name, claim)
        return namespace, name, claim["metadata"]["uid"]

    def vm_pod_claim(self, devices: list[str], **kw: Any) -> tuple[str, str, str]:
        self._n += 1
        pod = self.pod(f"vm-{self._n}", kw.pop("runtime_class", SNP), kw.pop("annotations", None))
        return self.claim(f"claim-{self._n}", devices, [pod], **kw)

    def http(self, method: str, path: str) -> dict[str, Any]:
        """A raw request to the double, as any other client would send it."""
        req = urllib.request.Request(f"{self.server.url}{path}", method=method)
        with urllib.request.urlopen(req) as resp:  # the double's plain-HTTP URL
            return dict(json.loads(resp.read()))

    def events_for(self, claim_name: str, namespace: str = "default") -> list[dict[str, Any]]:
        items = self.http("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        return [e for e in items if e["involvedObject"]["name"] == claim_name]

    def delete_claim(self, namespace: str, name: str) -> None:
        self.http("DELETE", f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}")

    def devices(self) -> list[str]:
        (s,) = self.api.list_resource_slices(DRIVER, NODE)
        return [d["name"] for d in s["spec"]["devices"]]

    def driver_of(self, bdf: str) -> str | None:
        return self.kernel.driver_of(bdf)

    def wait_for(self, cond: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            time.sleep(0.05)


@contextlib.contextmanager
def simulated_node(root: Path, topology: str = "dgx-h100") -> Iterator[Node]:
    """A seeded node (API-server double, kubelet double) under `root`; the plugin, if started, is killed at the end."""
    with ApiServerDouble() as server:
        api = KubernetesApi(server.write_kubeconfig(root / "kubeconfig"))
        kubelet = KubeletDouble(root / "registry")
        kubelet.start()
        node = Node(root, server, api, kubelet, topology=topology)
        node.seed()
        try:
            yield node
        finally:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
            kubelet.stop()
            api.close()
