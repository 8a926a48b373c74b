"""The chart's admission policies enforced by the real API server: for each, a request it admits and one it denies.

Requests go to the server with the identities that would send them: the plugin with a token bound to its pod on a
node (the node name comes from the token, as the policies expect), tenants as ordinary users. Writes that need not
persist use `dryRun=All`, which runs the whole admission chain, mutating policies included, and stores nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from .chart import NAMESPACE, SERVICE_ACCOUNT, TENANT_LABEL
from .conftest import NODE
from .controlplane import ControlPlane, Reply, Rest

pytestmark = pytest.mark.cluster

TENANT = "tenant-a"
OUTSIDER = "not-a-tenant"
DRIVER = "gpu.cc-gpu.io"
KEYS_NAMESPACE = "cc-gpu-token-keys"
DRY = "?dryRun=All"
ANNOTATION = "cdi.k8s.io/cc-gpu"
OURS = re.compile(r"^cc-gpu\.io/vfio=pod-[0-9a-f-]{36}$")


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, chart_release: list[dict[str, Any]]) -> Iterator[ControlPlane]:
    control_plane.ensure_namespace(TENANT, {TENANT_LABEL: "true"})
    control_plane.ensure_namespace(OUTSIDER)
    yield control_plane


@pytest.fixture(scope="module")
def plugin(cluster: ControlPlane) -> Rest:
    """The plugin as the chart runs it: its ServiceAccount's token, bound to its pod on NODE. Returned once the
    server enforces the chart's policies (its admission plugin picks new policies up from an informer)."""
    rest = cluster.as_token(cluster.pod_token(NAMESPACE, SERVICE_ACCOUNT, "cc-gpu-plugin-node-a", NODE))
    cluster.wait_for("the chart's policies to be enforced",
                     lambda: rest("POST", SLICES + DRY, slice_body("node-b")).code in (403, 422))
    return rest


@pytest.fixture(scope="module")
def plugin_without_node(cluster: ControlPlane) -> Rest:
    """The same ServiceAccount with a token bound to no pod: it names no node."""
    reply = cluster.admin.create(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}})
    return cluster.as_token(reply["status"]["token"])


def denied(reply: Reply, message: str) -> None:
    assert reply.code in (403, 422), f"expected a denial, got {reply.code}: {reply.body}"
    assert message in reply.body["message"], reply.body["message"]


def admitted(reply: Reply) -> Any:
    assert 200 <= reply.code < 300, f"expected admission, got {reply.code}: {reply.body}"
    return reply.body


# -- ResourceSlices: only the plugin's own node ----------------------------------------------------------------------

def slice_body(node: str | None, driver: str = DRIVER) -> dict[str, Any]:
    spec: dict[str, Any] = {"driver": driver, "pool": {"name": node or "all", "generation": 1,
                                                      "resourceSliceCount": 1},
                            "devices": [{"name": "gpu-0"}]}
    if node:
        spec["nodeName"] = node
    else:
        spec["allNodes"] = True
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"probe-{node or 'all'}-{driver.split('.', maxsplit=1)[0]}"}, "spec": spec}


SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def test_plugin_writes_its_own_nodes_slices(plugin: Rest) -> None:
    admitted(plugin("POST", SLICES + DRY, slice_body(NODE)))


@pytest.mark.parametrize(("case", "body", "message"), [
    ("another node", slice_body("node-b"), f"the plugin on node {NODE} may not write ResourceSlices of node node-b"),
    ("a cluster-wide slice", slice_body(None), "may not write ResourceSlices of no node"),
    ("another driver", slice_body(NODE, "gpu.nvidia.com"), "only write ResourceSlices of its own driver"),
])
def test_plugin_may_not_write_other_slices(plugin: Rest, case: str, body: dict[str, Any], message: str) -> None:
    denied(plugin("POST", SLICES + DRY, body), message)


def test_a_token_without_a_node_writes_no_slice(plugin_without_node: Rest) -> None:
    denied(plugin_without_node("POST", SLICES + DRY, slice_body(NODE)), "names no node")


# -- token keys: only the plugin's own node's ConfigMap --------------------------------------------------------------

def keys(node: str, kid_node: str | None = None, kid: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"cc-gpu-token-keys-{node}", "namespace": KEYS_NAMESPACE,
                         "annotations": {"cc-gpu.io/node": node}},
            "data": {f"{kid or (kid_node or node) + '.k1'}.pem":
                     "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"}}


CONFIGMAPS = f"/api/v1/namespaces/{KEYS_NAMESPACE}/configmaps"


def test_plugin_publishes_its_own_nodes_keys(plugin: Rest) -> None:
    admitted(plugin("POST", CONFIGMAPS + DRY, keys(NODE)))


@pytest.mark.parametrize(("case", "body", "message"), [
    ("another node's ConfigMap", keys("node-b"), f"may only write cc-gpu-token-keys-{NODE}"),
    ("another node's key ids", keys(NODE, kid_node="node-b"), "key id must be <node>.k<version> of the writing node"),
])
def test_plugin_may_not_publish_other_keys(plugin: Rest, case: str, body: dict[str, Any], message: str) -> None:
    denied(plugin("POST", CONFIGMAPS + DRY, body), message)


@pytest.mark.parametrize("suffix", [".k1", ".k123456789", ".kfoo", ".k01", ".k0", ".k1.k2", ".kx.k1", ".k", ".k-1"])
def test_key_id_grammar_is_the_codes(plugin: Rest, suffix: str) -> None:
    """The server admits exactly the key ids `cc_gpu.attest.binding` accepts for the writing node."""
    from cc_gpu.attest.binding import node_of_key_id  # noqa: PLC0415

    reply = plugin("POST", CONFIGMAPS + DRY, keys(NODE, kid=NODE + suffix))
    if node_of_key_id(NODE + suffix) == NODE:
        admitted(reply)
    else:
        denied(reply, "key id must be <node>.k<version> of the writing node")


# -- tenant namespaces -----------------------------------------------------------------------------------------------

def template(namespace: str, device_class: str = "vfio.gpu.cc-gpu.io") -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": "gpu", "namespace": namespace},
            "spec": {"spec": {"devices": {"requests": [
                {"name": "gpu", "exactly": {"deviceClassName": device_class}}]}}}}


def claim(namespace: str, device_class: str = "attested-vfio.gpu.cc-gpu.io") -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "gpu", "namespace": namespace},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": device_class}}]}}}


def test_tenant_namespaces_may_request_gpu_classes(cluster: ControlPlane) -> None:
    admitted(cluster.admin("POST", f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaimtemplates{DRY}",
                           template(TENANT)))
    admitted(cluster.admin("POST", f"/apis/resource.k8s.io/v1/namespaces/{TENANT}/resourceclaims{DRY}",
                           claim(TENANT)))


def test_other_namespaces_may_not(cluster: ControlPlane) -> None:
    message = f"cc-gpu device classes may be requested only in namespaces labelled {TENANT_LABEL}=true"
    denied(cluster.admin("POST", f"/apis/resource.k8s.io/v1/namespaces/{OUTSIDER}/resourceclaimtemplates{DRY}",
                         template(OUTSIDER)), message)
    denied(cluster.admin("POST", f"/apis/resource.k8s.io/v1/namespaces/{OUTSIDER}/resourceclaims{DRY}",
                         claim(OUTSIDER)), message)
    admitted(cluster.admin("POST", f"/apis/resource.k8s.io/v1/namespaces/{OUTSIDER}/resourceclaims{DRY}",
                           claim(OUTSIDER, "other.example.com")))


def pod(runtime_class: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "cuda", "image": "cuda"}]}
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "job", "namespace": TENANT}, "spec": spec}


# -- claims by name need a confidential RuntimeClass in tenant namespaces ---------------------------------------------

def by_name(runtime_class: str | None, claim_name: str | None = "shared-gpu") -> dict[str, Any]:
    body = pod(runtime_class)
    ref = {"name": "gpu", "resourceClaimName": claim_name} if claim_name else {"name": "gpu",
                                                                               "resourceClaimTemplateName": "t"}
    body["spec"]["resourceClaims"] = [ref]
    return body


@pytest.mark.parametrize(("case", "body", "message"), [
    ("shared claim, SNP pod", by_name("kata-qemu-nvidia-gpu-snp"), ""),
    ("shared claim, TDX pod", by_name("kata-qemu-nvidia-gpu-tdx"), ""),
    ("claim from a template, runc pod", by_name(None, None), ""),
    ("shared claim, runc pod", by_name(None), "only with a confidential RuntimeClass"),
    ("shared claim, plain Kata pod", by_name("kata-qemu-nvidia-gpu"), "only with a confidential RuntimeClass"),
])
def test_pods_reference_claims_by_name_only_when_confidential(cluster: ControlPlane, case: str,
                                                              body: dict[str, Any], message: str) -> None:
    reply = cluster.admin("POST", f"/api/v1/namespaces/{TENANT}/pods{DRY}", body)
    if message:
        denied(reply, message)
    else:
        assert reply.code not in (403, 422) or "ResourceClaim by name" not in str(reply.body), (case, reply.body)


# -- least privilege -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("case", "method", "path", "body"), [
    ("read secrets", "GET", f"/api/v1/namespaces/{NAMESPACE}/secrets", None),
    ("create pods", "POST", f"/api/v1/namespaces/{TENANT}/pods{DRY}", pod(None)),
    ("list claims cluster-wide", "GET", "/apis/resource.k8s.io/v1/resourceclaims", None),
    ("write DeviceClasses", "POST", f"/apis/resource.k8s.io/v1/deviceclasses{DRY}",
     {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "x"}, "spec": {}}),
])
def test_the_plugins_role_allows_nothing_else(plugin: Rest, case: str, method: str, path: str,
                                             body: dict[str, Any] | None) -> None:
    reply = plugin(method, path, body)
    assert reply.code == 403, f"{case}: {reply.code} {reply.body}"
