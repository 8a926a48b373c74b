"""The real plugin process against the real control plane, as the chart runs it.

The plugin runs as `python -m cc_gpu plugin` with the chart's arguments and its rendered `plugin.toml`, on a simulated
host, registered with the kubelet double, and authenticates with a token of the chart's ServiceAccount bound to a Pod
on its Node (TokenRequest with `boundObjectRef`), exactly what the kubelet mounts into the DaemonSet's pod: the token
carries the node name, so RBAC, the Node-scoped `resourceclaims/driver` checks and the chart's own-node admission
policies decide every call. No test here runs the plugin with an admin identity.

Writes are counted on the server itself (`apiserver_request_total` from `/metrics`), so "no write in steady state"
is what the real kube-apiserver saw, not what the client believes it sent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_gpu.dra.kubelet import KubeletDouble
from cc_gpu.kube.client import KubernetesApi

from .chart import NAMESPACE, SERVICE_ACCOUNT
from .controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
DRIVER = "gpu.cc-gpu.io"  # the chart's default driverName
VFIO_CLASS = "vfio.gpu.cc-gpu.io"
ATTESTED_CLASS = "attested-vfio.gpu.cc-gpu.io"
SNP = "kata-qemu-nvidia-gpu-snp"
KATA_NODE_LABELS = {
    "katacontainers.io/kata-runtime": "true",
    "nvidia.com/cc.ready.state": "true",
    "amd.feature.node.kubernetes.io/snp": "true",
}
"""What the chart's SNP RuntimeClass schedules onto (`scheduling.nodeSelector`)."""
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE")


def chart_plugin_toml(release: list[dict[str, Any]]) -> str:
    """The `plugin.toml` of the installed release's settings ConfigMap, as the DaemonSet mounts it."""
    for obj in release:
        if obj.get("kind") == "ConfigMap" and "plugin.toml" in (obj.get("data") or {}):
            return str(obj["data"]["plugin.toml"])
    raise AssertionError("the chart renders no ConfigMap with plugin.toml")


def slice_writes(plane: ControlPlane) -> int:
    """How many write requests to resourceslices the real server has answered so far (all codes)."""
    text = plane.admin("GET", "/metrics").body
    assert isinstance(text, str), "the /metrics reply is not text"
    total = 0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if labels.get("resource") == "resourceslices" and labels.get("verb") in WRITE_VERBS:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@dataclass
class PluginNode:
    """One Node of the real cluster with the plugin running on its simulated host."""

    plane: ControlPlane
    name: str
    root: Path
    kubelet: KubeletDouble
    api: KubernetesApi  # the plugin's own identity (the pod-bound ServiceAccount token)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sim_root(self) -> Path:
        return self.root / "sim"

    @property
    def log_path(self) -> Path:
        return self.root / "plugin.log"

    def start(self, *extra: str) -> None:
        args = [
            sys.executable,
            "-m",
            "cc_gpu",
            "plugin",
            f"--config={self.root / 'plugin.toml'}",
            f"--node-name={self.name}",
            f"--driver-name={DRIVER}",
            f"--plugin-dir={self.root / 'plugins' / DRIVER}",
            f"--registry-dir={self.root / 'registry'}",
            f"--cdi-root={self.root / 'cdi'}",
            "--kata-check=off",
            "--sim",
            "dgx-h100",
            "--sim-root",
            str(self.sim_root),
            "--kubeconfig",
            str(self.root / "kubeconfig"),
            "--rescan-seconds",
            "2",
            *extra,
        ]
        seen = self.kubelet.registrations
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=log
            )
        try:
            self.kubelet.wait_registered(DRIVER, timeout=60, after=seen)
        except Exception:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"the plugin on {self.name} did not register:\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def slices(self) -> list[dict[str, Any]]:
        selector = f"spec.driver={DRIVER},spec.nodeName={self.name}"
        reply = self.plane.admin("GET", f"/apis/resource.k8s.io/v1/resourceslices?fieldSelector={selector}")
        return list(reply.ok()["items"])

    def wait_published(self, predicate: Any = None, timeout: float = 60) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            found = self.slices()
            return found if found and (predicate is None or predicate(found)) else None

        try:
            return self.plane.wait_for(f"ResourceSlices of {self.name}", ready, timeout=timeout)  # type: ignore[no-any-return]
        except Exception as e:
            raise AssertionError(f"{e}\nplugin log:\n{self.log()}") from None


@contextmanager
def plugin_node(
    plane: ControlPlane,
    release: list[dict[str, Any]],
    root: Path,
    name: str,
    labels: Mapping[str, str] | None = None,
    toml_extra: str = "",
) -> Iterator[PluginNode]:
    """A Node (created if missing, labelled for the chart's SNP RuntimeClass) and its plugin's identity and files."""
    plane.create_node(name, {**KATA_NODE_LABELS, **(labels or {})})
    # Labels for the SNP RuntimeClass; and no `node.kubernetes.io/not-ready` taint, which the TaintNodesByCondition
    # admission plugin puts on every new Node and only the (disabled) node-lifecycle controller would lift.
    patch = {"metadata": {"labels": {**KATA_NODE_LABELS, **(labels or {})}}, "spec": {"taints": None}}
    plane.admin("PATCH", f"/api/v1/nodes/{name}", patch, content_type="application/merge-patch+json").ok()
    root.mkdir(parents=True, exist_ok=True)
    (root / "plugin.toml").write_text(chart_plugin_toml(release) + toml_extra)
    plane.pod_token_kubeconfig(
        NAMESPACE, SERVICE_ACCOUNT, f"cc-gpu-kubelet-plugin-{name}", root / "kubeconfig", node_name=name
    )
    kubelet = KubeletDouble(root / "registry")
    kubelet.start()
    api = KubernetesApi(root / "kubeconfig")
    node = PluginNode(plane, name, root, kubelet, api)
    try:
        yield node
    finally:
        node.stop()
        kubelet.stop()
        api.close()
