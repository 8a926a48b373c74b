"""The guest attestation path against the real kube-apiserver: the challenge the plugin writes, the verdict the
service writes, RBAC, and the resourceVersion-conditioned consume, decided by the real server.

A pod asks for a GPU of a DeviceClass whose opaque config requires guest attestation; the real scheduler allocates,
the plugin (pod-bound identity of the chart's ServiceAccount) prepares it and records the challenge; the service's
core runs with a ServiceAccount token of its own: without `arbitrary-node` rights on `resourceclaims/driver` its
write is refused by the server and nothing is recorded; with them, two replicas race on one challenge and the real
server's resourceVersion precondition lets exactly one consume it, its verdict merged with the plugin's `Ready`.
"""

from __future__ import annotations

import contextlib
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cc_gpu.dra.challenge import ENV_CHALLENGE
from cc_gpu.dra.guestservice import REUSED, UNAVAILABLE
from cc_gpu.kube.client import KubernetesApi
from tests.dra.guest import cdi_env, guest_config, guest_evidence, in_process_service, make_pki, race

from .chart import NAMESPACE, TENANT_LABEL
from .controlplane import ControlPlane, write_kubeconfig
from .plugin_node import DRIVER, PluginNode, plugin_node
from .test_plugin_real import TENANT, _claim, _entry, _vm_pod

pytestmark = pytest.mark.cluster

NODE = "node-guest"
GUEST_CLASS = "guest-attested.gpu.cc-gpu.io"
SERVICE_RULES = [
    {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get", "list"]},
    {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/status"], "verbs": ["patch", "update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
DRIVER_RULE = {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/driver"],
               "resourceNames": [DRIVER], "verbs": ["arbitrary-node:update", "arbitrary-node:patch"]}


def _identity(plane: ControlPlane, name: str, rules: list[dict[str, Any]], path: Path) -> KubernetesApi:
    """A ServiceAccount with a ClusterRole of `rules`, and a client authenticated by a token of it."""
    admin = plane.admin
    for obj_path, body in (
        (f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
         {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles",
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
          "rules": rules}),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
          "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]}),
    ):
        reply = admin("POST", obj_path, body)
        if reply.code != 409:
            reply.ok()
    token = admin.create(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{name}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    write_kubeconfig(path, plane.url, plane.ca_file, token=token["status"]["token"])
    return KubernetesApi(path)


@pytest.fixture(scope="module")
def guest_node(control_plane: ControlPlane, chart_release: list[dict[str, Any]],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginNode]:
    root = tmp_path_factory.mktemp("guest-node")
    pki = make_pki(root / "pki")
    device_class = {
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": GUEST_CLASS},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}],
                 "config": [{"opaque": c["opaque"]} for c in guest_config()]}}
    # Compact, keys sorted: the bytes `kubectl apply` sends, which the server keeps for the opaque parameters.
    reply = control_plane.admin("POST", "/apis/resource.k8s.io/v1/deviceclasses",
                                json.dumps(device_class, separators=(",", ":"), sort_keys=True).encode())
    if reply.code != 409:
        reply.ok()
    control_plane.ensure_namespace(TENANT, {TENANT_LABEL: "true"})
    with plugin_node(control_plane, chart_release, root / NODE, NODE) as node:
        settings = tomllib.loads((node.root / "plugin.toml").read_text())
        settings.setdefault("attestation", {}).update(
            {"service_url": "https://127.0.0.1:1", "service_ca": str(pki.ca)})
        (node.root / "plugin.toml").write_text(tomli_w.dumps(settings))
        node.start()
        node.wait_published(lambda s: len([d for x in s for d in x["spec"].get("devices") or []]) == 8)
        yield node


@pytest.fixture(scope="module")
def gate(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesApi]:
    token = control_plane.admin.create(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/cc-gpu-pod-gate/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    path = tmp_path_factory.mktemp("guest-pod-gate") / "kubeconfig"
    write_kubeconfig(path, control_plane.url, control_plane.ca_file, token=token["status"]["token"])
    api = KubernetesApi(path)
    yield api
    api.close()


def test_challenge_consumed_once_under_real_rbac(control_plane: ControlPlane, guest_node: PluginNode,
                                                 gate: KubernetesApi, tmp_path: Path) -> None:
    ref = _vm_pod(control_plane, gate, "vm-guest", GUEST_CLASS, NODE)
    result = guest_node.kubelet.prepare(DRIVER, [ref])[ref[2]]
    assert result.error == "", guest_node.log()
    entry = _entry(_claim(control_plane, ref))
    assert {c["type"]: c["status"] for c in entry["conditions"]} == {"Ready": "True", "Attested": "Unknown"}
    assert entry["data"]["attestation"]["challenge"]["state"] == "open"
    env = cdi_env(guest_node.root / "cdi", ref[2])
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    device = entry["device"]
    bdf = _bdf_of(entry)
    evidence = guest_evidence(guest_node, [bdf], nonce)  # type: ignore[arg-type]

    with contextlib.ExitStack() as stack:
        weak = stack.enter_context(contextlib.closing(
            _identity(control_plane, "attestation-no-driver-rights", SERVICE_RULES, tmp_path / "weak")))
        strong = stack.enter_context(contextlib.closing(
            _identity(control_plane, "attestation-service", [*SERVICE_RULES, DRIVER_RULE], tmp_path / "strong")))
        # Without rights on resourceclaims/driver the real server refuses the write: nothing is recorded.
        refused = in_process_service(guest_node, weak).verify_submission(nonce, evidence, client="c")  # type: ignore[arg-type]
        assert (refused.accepted, refused.failed_checks) == (False, (UNAVAILABLE,))
        assert _entry(_claim(control_plane, ref))["data"]["attestation"]["challenge"]["state"] == "open"
        # Two replicas race on the challenge: the resourceVersion precondition lets one consume it.
        replicas = [in_process_service(guest_node, strong, replica=f"r{i}") for i in range(2)]  # type: ignore[arg-type]
        results = race(replicas, nonce, evidence)
    assert sorted(r.accepted for r in results) == [False, True]
    assert [r.failed_checks for r in results if not r.accepted] == [(REUSED,)]
    entry = _entry(_claim(control_plane, ref))
    assert entry["device"] == device
    assert {c["type"]: c["status"] for c in entry["conditions"]} == {"Ready": "True", "Attested": "True"}
    data = entry["data"]["attestation"]
    assert data["evidence"] == "guest" and data["challenge"]["state"] == "consumed"
    assert data["gpus"][0]["identity"].startswith("trust on first use"), "CC was on at discovery: nothing recorded"
    assert guest_node.kubelet.unprepare(DRIVER, [ref]) == {ref[2]: ""}


def _bdf_of(entry: dict[str, Any]) -> str:
    (gpu,) = entry["data"]["attestation"]["challenge"]["gpus"]
    return str(gpu["bdf"])
