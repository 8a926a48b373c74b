"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver, kube-scheduler and
kube-controller-manager, built from their Go modules (tests/cluster/build.py).

What it runs, and why:
- **etcd** with fsync off (a test cluster loses nothing worth keeping).
- **kube-apiserver** with TLS from certificates made per cluster, client certificates and service-account tokens for
  authentication, `--authorization-mode=Node,RBAC`, and its default admission chain (which includes
  NodeRestriction's companions, ServiceAccount, ValidatingAdmissionPolicy and MutatingAdmissionPolicy, both GA). The
  DRA features cc-gpu uses are on by their 1.37 defaults, so no feature gate is set: DynamicResourceAllocation,
  DRAResourceClaimDeviceStatus and DRADeviceTaints/DRADeviceTaintRules (GA), DRADeviceBindingConditions (beta, on).
- **kube-scheduler**, the real structured allocator and CEL, with its own RBAC identity.
- **kube-controller-manager** with only the controllers the tests need: resourceclaim (claims from templates),
  serviceaccount (the `default` ServiceAccount of each namespace), namespace, garbage collector, and the
  ValidatingAdmissionPolicy status controller (it type-checks each policy's CEL against the schemas). The
  node-lifecycle controller is off, so the test Node (no kubelet renews its Lease) is never tainted unreachable and
  its pods are never evicted.

Readiness is `/readyz` (and etcd's `/health`), every wait is bounded, each component logs to `logs_dir`, and `stop()`
ends every process it started (also at interpreter exit), so nothing is left running.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from . import pki as pki_module
from .build import Binaries, build

READY_TIMEOUT_S = 120.0
CONTROLLERS = ",".join([
    "resourceclaim-controller", "serviceaccount-controller", "namespace-controller", "garbage-collector-controller",
    "validatingadmissionpolicy-status-controller",
])


class ClusterError(Exception):
    """The control plane could not start or answer (the message carries the component's log tail)."""


@dataclass
class Reply:
    code: int
    body: Any

    def ok(self) -> Any:
        if not 200 <= self.code < 300:
            raise ClusterError(f"API request failed: {self.code} {json.dumps(self.body)[:2000]}")
        return self.body


class Rest:
    """Plain HTTPS+JSON to the API server with one identity (a client certificate or a bearer token)."""

    def __init__(self, host: str, port: int, ca_file: Path, *, cert: pki_module.Pair | None = None,
                 token: str | None = None) -> None:
        self.host, self.port, self.token = host, port, token
        self.context = ssl.create_default_context(cafile=str(ca_file))
        if cert is not None:
            self.context.load_cert_chain(str(cert.cert), str(cert.key))

    def __call__(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                 timeout: float = 30.0) -> Reply:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=timeout)
        try:
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                parsed: Any = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return Reply(response.status, parsed)
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        return self("GET", path).ok()

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self("POST", path, dict(body)).ok()


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class ControlPlane:
    workdir: Path
    binaries: Binaries
    pki: pki_module.Pki
    port: int
    admin_kubeconfig: Path
    logs_dir: Path
    processes: list[Process] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)  # the --feature-gates flag of every component, when set

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, *, scheduler: bool = True, controller_manager: bool = True,
              feature_gates: Mapping[str, bool] | None = None,
              dynamic_resources_args: Mapping[str, Any] | None = None) -> ControlPlane:
        """`feature_gates`: set on every component (the default: 1.37's defaults). `dynamic_resources_args`: the
        scheduler's DynamicResources plugin arguments (`bindingTimeout`, ...), through a scheduler config file."""
        binaries = build()
        workdir.mkdir(parents=True, exist_ok=True)
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        pki = pki_module.make(workdir / "pki")
        port = _free_port()
        plane = cls(workdir, binaries, pki, port, workdir / "admin.kubeconfig", logs)
        gates = ([f"--feature-gates={','.join(f'{k}={str(v).lower()}' for k, v in sorted(feature_gates.items()))}"]
                 if feature_gates else [])
        plane.gates = gates
        write_kubeconfig(plane.admin_kubeconfig, plane.url, pki.ca.cert, cert=pki.admin)
        atexit.register(plane.stop)
        try:
            plane._start_etcd_and_apiserver()
            if scheduler:
                kubeconfig = workdir / "scheduler.kubeconfig"
                write_kubeconfig(kubeconfig, plane.url, pki.ca.cert, cert=pki.scheduler)
                config: list[str] = []
                if dynamic_resources_args:
                    config_file = workdir / "scheduler-config.yaml"
                    config_file.write_text(yaml.safe_dump({
                        "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
                        "clientConnection": {"kubeconfig": str(kubeconfig)}, "leaderElection": {"leaderElect": False},
                        "profiles": [{"schedulerName": "default-scheduler", "pluginConfig": [{
                            "name": "DynamicResources",
                            "args": {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "DynamicResourcesArgs",
                                     **dynamic_resources_args}}]}],
                    }))
                    config = [f"--config={config_file}"]
                plane._spawn("kube-scheduler", [
                    str(binaries.path("kube-scheduler")), *(config or [f"--kubeconfig={kubeconfig}",
                                                                        "--leader-elect=false"]),
                    f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                    "--bind-address=127.0.0.1", f"--secure-port={_free_port()}", "--v=2", *gates,
                ])
            if controller_manager:
                kubeconfig = workdir / "controller-manager.kubeconfig"
                write_kubeconfig(kubeconfig, plane.url, pki.ca.cert, cert=pki.controller_manager)
                plane._spawn("kube-controller-manager", [
                    str(binaries.path("kube-controller-manager")), f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
                    "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={_free_port()}",
                    f"--controllers={CONTROLLERS}", "--use-service-account-credentials=true",
                    f"--root-ca-file={pki.ca.cert}", "--v=2", *gates,
                ])
        except BaseException:
            plane.stop()
            raise
        return plane

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Ends every process started, newest first: SIGTERM, then SIGKILL after a bounded wait."""
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in reversed(self.processes):
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=10)
        self.processes.clear()

    # -- access ----------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki.ca.cert

    @property
    def admin(self) -> Rest:
        return Rest("127.0.0.1", self.port, self.pki.ca.cert, cert=self.pki.admin)

    def as_token(self, token: str) -> Rest:
        return Rest("127.0.0.1", self.port, self.pki.ca.cert, token=token)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for log in sorted(self.logs_dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- objects the tests need ------------------------------------------------------------------------------------

    def create_node(self, name: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A Ready Node with room for pods; no kubelet runs, and no controller marks it unreachable."""
        admin = self.admin
        reply = admin("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  **(labels or {})}},
        })
        if reply.code != 409:
            reply.ok()
        # TaintNodesByCondition admission gives every new Node `node.kubernetes.io/not-ready:NoSchedule`, which only
        # the (disabled) node-lifecycle controller would lift: lift it, so the scheduler can place pods here.
        admin("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}},
              content_type="application/merge-patch+json").ok()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        resources = {"cpu": "64", "memory": "512Gi", "pods": "110"}
        status = {"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        }}
        return admin("PATCH", f"/api/v1/nodes/{name}/status", status,  # type: ignore[no-any-return]
                     content_type="application/merge-patch+json").ok()

    def ensure_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        """The namespace, with the `default` ServiceAccount the controller manager gives it (pods need one)."""
        reply = self.admin("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})
        if reply.code != 409:
            reply.ok()
        self.wait_for(f"the default ServiceAccount of {name}",
                      lambda: self.admin("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default").code == 200)

    def pod_token(self, namespace: str, service_account: str, pod_name: str, node_name: str,
                  *, expiration_seconds: int = 3600) -> str:
        """A token of `service_account` bound to a Pod on `node_name` (created if missing), as a kubelet would mint
        for the plugin's pod: it carries the pod and node names, so `associated-node` checks and the chart's
        own-node policies see the node."""
        admin = self.admin
        path = f"/api/v1/namespaces/{namespace}/pods"
        reply = admin("GET", f"{path}/{pod_name}")
        if reply.code == 404:
            pod = admin.create(path, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace, "labels": {"app": pod_name}},
                "spec": {"nodeName": node_name, "serviceAccountName": service_account,
                         "automountServiceAccountToken": False,
                         "containers": [{"name": "plugin", "image": "cc-gpu:test"}]},
            })
        else:
            pod = reply.ok()
        request = admin.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds,
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name,
                                        "uid": pod["metadata"]["uid"]}},
        })
        return str(request["status"]["token"])

    def pod_token_kubeconfig(self, namespace: str, service_account: str, pod_name: str, path: Path,
                             node_name: str) -> Path:
        token = self.pod_token(namespace, service_account, pod_name, node_name)
        write_kubeconfig(path, self.url, self.pki.ca.cert, token=token)
        return path

    def wait_for(self, what: str, predicate: Any, timeout: float = 60.0, interval: float = 0.25) -> Any:
        """Polls `predicate()` until it returns something truthy; fails with the component logs after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.log_tail()}")
            time.sleep(interval)

    # -- internals -------------------------------------------------------------------------------------------------

    def _start_etcd_and_apiserver(self) -> None:
        client, peer = _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            str(self.binaries.path("etcd")), "--name=cc-gpu-test", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=cc-gpu-test=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait_ready("etcd", lambda: _http_ok("127.0.0.1", client, "/health"))
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(self.binaries.path("kube-apiserver")), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving.cert}", f"--tls-private-key-file={pki.serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--enable-admission-plugins=NodeRestriction", "--profiling=false", "--v=1", *self.gates,
        ])
        admin = self.admin
        self._wait_ready("kube-apiserver", lambda: _safe_code(admin, "/readyz") == 200)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.logs_dir / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, cwd=self.workdir,
                                 preexec_fn=_die_with_parent)  # noqa: PLW1509 (one libc call, resolved beforehand)
        handle.close()
        self.processes.append(Process(name, popen, log))

    def _wait_ready(self, name: str, ready: Any) -> None:
        process = next(p for p in self.processes if p.name == name)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if process.popen.poll() is not None:
                raise ClusterError(f"{name} exited with {process.popen.returncode}\n{self.log_tail(80)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{name} not ready after {READY_TIMEOUT_S:.0f} s\n{self.log_tail(80)}")
            time.sleep(0.2)


def write_kubeconfig(path: Path, server: str, ca: Path, *, cert: pki_module.Pair | None = None,
                      token: str | None = None) -> None:
    user: dict[str, str] = {}
    if cert is not None:
        user = {"client-certificate-data": base64.b64encode(cert.cert.read_bytes()).decode(),
                "client-key-data": base64.b64encode(cert.key.read_bytes()).decode()}
    if token is not None:
        user = {"token": token}
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent: the child only calls it
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills it when the test process dies, even by SIGKILL, when `stop()` and
    atexit never run, so no component outlives its test session."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http_ok(host: str, port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _safe_code(rest: Rest, path: str) -> int:
    try:
        return rest("GET", path, timeout=5).code
    except OSError:
        return 0


def object_path(obj: Mapping[str, Any], *, name: bool = True) -> str:
    """The REST path of a manifest's object (core and named groups, namespaced or not)."""
    group_version = obj["apiVersion"]
    kind = obj["kind"]
    plural = _PLURALS.get(kind) or kind.lower() + "s"
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    namespace = obj.get("metadata", {}).get("namespace")
    if namespace and kind not in _CLUSTER_SCOPED:
        base += f"/namespaces/{namespace}"
    path = f"{base}/{plural}"
    return f"{path}/{quote(obj['metadata']['name'])}" if name else path


_PLURALS = {
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
    "RuntimeClass": "runtimeclasses",
    "DeviceClass": "deviceclasses",
    "ResourceClaim": "resourceclaims",
    "ResourceClaimTemplate": "resourceclaimtemplates",
    "ResourceSlice": "resourceslices",
    "ServiceMonitor": "servicemonitors",
}
_CLUSTER_SCOPED = {
    "Namespace", "Node", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
    "RuntimeClass", "DeviceClass", "ResourceSlice",
}
