"""The chart's admission policies, evaluated with a CEL interpreter on the objects the API server would show them.

The mutating policy gives Kata GPU pods their per-pod CDI device; the guard stops a pod from naming someone else's;
the slice policy keeps each node's plugin to its own node; the tenant policy keeps the GPU classes to labelled
namespaces. The last test closes the loop: the annotation the policy sets is resolved by the Go CDI consumer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cc_gpu.attest.binding import KEY_VERSION_PATTERN, node_of_key_id
from cc_gpu.dra.keys import NodeKey, configmap_body, key_id
from tests.cdi.consumer import Consumer, build, device_paths
from tests.cdi.shapes import legacy_nodes, write_pod_spec
from tests.deploy.cel import Policy, Review
from tests.deploy.chart import NAMESPACE, one, render

OBJECTS = render()
MUTATING = Policy(one(OBJECTS, "MutatingAdmissionPolicy", "cdi-annotation")["spec"])
GUARD = Policy(one(OBJECTS, "ValidatingAdmissionPolicy", "cdi-annotation-guard")["spec"])
SLICES = Policy(one(OBJECTS, "ValidatingAdmissionPolicy", "slice-node-restriction")["spec"])
TENANTS = Policy(one(OBJECTS, "ValidatingAdmissionPolicy", "tenant-namespaces")["spec"])
TOKEN_KEYS = Policy(one(OBJECTS, "ValidatingAdmissionPolicy", "token-keys-own-node")["spec"])
UID = "7d1c4c2a-8f61-4a6e-9d0b-5c2e3f4a5b6c"
OURS = f"cc-gpu.io/vfio=pod-{UID}"


def assert_denied(policy: Policy, review: Review, expected: list[str]) -> None:
    """The policy's denial messages, in order, each contain the expected part (none expected: admitted)."""
    denials = policy.denials(review)
    assert len(denials) == len(expected), denials
    for message, part in zip(denials, expected, strict=True):
        assert part in message


def pod(runtime_class: str | None = "kata-qemu-nvidia-gpu-snp", claims: bool = True,
        annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "cuda", "image": "cuda"}]}
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if claims:
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "attested-gpu"}]
    metadata: dict[str, Any] = {"generateName": "job-", "namespace": "tenant-a"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


MUTATIONS = [
    ("snp pod with claims", pod(), {"cdi.k8s.io/cc-gpu": OURS}),
    ("tdx pod keeps its other annotations", pod("kata-qemu-nvidia-gpu-tdx", annotations={"team": "ml"}),
     {"team": "ml", "cdi.k8s.io/cc-gpu": OURS}),
    ("plain kata gpu pod", pod("kata-qemu-nvidia-gpu"), {"cdi.k8s.io/cc-gpu": OURS}),
    ("runc pod", pod(None), None),
    ("other runtime class", pod("kata-qemu"), None),
    ("kata gpu pod without claims", pod(claims=False), None),
    ("existing value is never overwritten", pod(annotations={"cdi.k8s.io/cc-gpu": "cc-gpu.io/vfio=pod-x"}),
     {"cdi.k8s.io/cc-gpu": "cc-gpu.io/vfio=pod-x"}),
]


@pytest.mark.parametrize(("obj", "expected"), [c[1:] for c in MUTATIONS], ids=[c[0] for c in MUTATIONS])
def test_mutating_policy_sets_the_pod_cdi_device(obj: dict[str, Any], expected: dict[str, str] | None) -> None:
    mutated = MUTATING.mutate(Review("CREATE", obj, uid=UID))
    assert mutated["metadata"].get("annotations") == expected
    assert mutated["spec"] == obj["spec"]


GUARD_CASES = [
    ("the value the mutating policy set", Review("CREATE", pod(annotations={"cdi.k8s.io/cc-gpu": OURS}), uid=UID),
     []),
    ("no annotations", Review("CREATE", pod(), uid=UID), []),
    ("another vendor's CDI device is not ours to judge",
     Review("CREATE", pod(annotations={"cdi.k8s.io/nic": "example.com/net=eth1"}), uid=UID), []),
    ("a value kept from elsewhere", Review("CREATE", pod(annotations={"cdi.k8s.io/cc-gpu": "cc-gpu.io/vfio=pod-x"}),
                                           uid=UID), ["pods may not name cc-gpu CDI devices"]),
    ("another claim's device under any key",
     Review("CREATE", pod(annotations={"cdi.k8s.io/steal": "example.com/a=b,cc-gpu.io/vfio=claim-1-gpu-0"}), uid=UID),
     ["pods may not name cc-gpu CDI devices"]),
    ("unchanged on update", Review("UPDATE", pod(annotations={"cdi.k8s.io/cc-gpu": OURS, "x": "2"}),
                                   old=pod(annotations={"cdi.k8s.io/cc-gpu": OURS}), uid="other"), []),
    ("changed on update", Review("UPDATE", pod(annotations={"cdi.k8s.io/cc-gpu": "cc-gpu.io/vfio=pod-y"}),
                                 old=pod(annotations={"cdi.k8s.io/cc-gpu": OURS}), uid="y"),
     ["cannot be added or changed"]),
    ("added on update", Review("UPDATE", pod(annotations={"cdi.k8s.io/cc-gpu": "cc-gpu.io/vfio=pod-z"}),
                               old=pod(), uid="z"), ["cannot be added or changed"]),
]


@pytest.mark.parametrize("review,expected", [c[1:] for c in GUARD_CASES], ids=[c[0] for c in GUARD_CASES])
def test_guard_rejects_pods_naming_cc_gpu_devices(review: Review, expected: list[str]) -> None:
    assert_denied(GUARD, review, expected)


def test_mutation_then_guard_admits_the_pod() -> None:
    mutated = MUTATING.mutate(Review("CREATE", pod(), uid=UID))
    assert GUARD.denials(Review("CREATE", mutated, uid=UID)) == []


PLUGIN = f"system:serviceaccount:{NAMESPACE}:cc-gpu-kubelet-plugin"


def plugin_on(node: str | None) -> dict[str, Any]:
    extra = {"authentication.kubernetes.io/node-name": [node]} if node else {}
    return {"username": PLUGIN, "extra": extra}


def slice_on(node: str | None, driver: str = "gpu.cc-gpu.io") -> dict[str, Any]:
    spec: dict[str, Any] = {"driver": driver, "pool": {"name": "n", "generation": 1, "resourceSliceCount": 1}}
    if node:
        spec["nodeName"] = node
    else:
        spec["allNodes"] = True
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": "s"}, "spec": spec}


SLICE_CASES = [
    ("own node", Review("CREATE", slice_on("node-a"), user=plugin_on("node-a")), []),
    ("another node", Review("UPDATE", slice_on("node-b"), old=slice_on("node-b"), user=plugin_on("node-a")),
     ["may not write ResourceSlices of node node-b"]),
    ("delete on another node", Review("DELETE", None, old=slice_on("node-b"), user=plugin_on("node-a")),
     ["may not write ResourceSlices of node node-b"]),
    ("delete on own node", Review("DELETE", None, old=slice_on("node-a"), user=plugin_on("node-a")), []),
    ("cluster-wide slice", Review("CREATE", slice_on(None), user=plugin_on("node-a")),
     ["may not write ResourceSlices of no node"]),
    ("another driver", Review("CREATE", slice_on("node-a", "gpu.nvidia.com"), user=plugin_on("node-a")),
     ["only write ResourceSlices of its own driver"]),
    ("token without node", Review("CREATE", slice_on("node-a"), user=plugin_on(None)),
     ["names no node", "may not write"]),
    ("other users are not this policy's business",
     Review("CREATE", slice_on("node-b"), user={"username": "system:node:node-a"}), []),
]


@pytest.mark.parametrize("review,expected", [c[1:] for c in SLICE_CASES], ids=[c[0] for c in SLICE_CASES])
def test_plugin_writes_only_its_own_nodes_slices(review: Review, expected: list[str]) -> None:
    assert_denied(SLICES, review, expected)


KEY = ec.generate_private_key(ec.SECP384R1())


def keys_of(node: str, kid_node: str | None = None, versions: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """The ConfigMap the plugin publishes (`cc_gpu.dra.keys.configmap_body`), optionally with another node's key ids."""
    keys = [NodeKey(key_id(kid_node or node, v), v, datetime(2026, 1, v, tzinfo=UTC), KEY) for v in versions]
    body = configmap_body(node, "cc-gpu-token-keys", keys)
    if kid_node:
        body["metadata"]["name"] = f"cc-gpu-token-keys-{node}"
    return body


def renamed(body: dict[str, Any], name: str) -> dict[str, Any]:
    return {**body, "metadata": {**body["metadata"], "name": name}}


def annotated(body: dict[str, Any], node: str | None) -> dict[str, Any]:
    annotations = {"cc-gpu.io/node": node} if node else {}
    return {**body, "metadata": {**body["metadata"], "annotations": annotations}}


KEY_CASES = [
    ("own node's keys, as the plugin publishes them", Review("CREATE", keys_of("node-a"), user=plugin_on("node-a")),
     []),
    ("update after a rotation", Review("UPDATE", keys_of("node-a", versions=(2, 3)), old=keys_of("node-a"),
                                       user=plugin_on("node-a")), []),
    ("another node's ConfigMap", Review("UPDATE", keys_of("node-b"), old=keys_of("node-b"), user=plugin_on("node-a")),
     ["may only write cc-gpu-token-keys-node-a", "annotation must name the writing node", "key id"]),
    ("another node's key ids in its own ConfigMap",
     Review("CREATE", annotated(keys_of("node-a", kid_node="node-b"), "node-a"), user=plugin_on("node-a")),
     ["key id must be <node>.k<version> of the writing node"]),
    ("a prefix of its name is not its name",
     Review("CREATE", keys_of("node-a", kid_node="node-ab"), user=plugin_on("node-a")), ["key id"]),
    ("own ConfigMap under another name", Review("CREATE", renamed(keys_of("node-a"), "cc-gpu-token-keys"),
                                                user=plugin_on("node-a")), ["may only write"]),
    ("annotation missing", Review("CREATE", annotated(keys_of("node-a"), None), user=plugin_on("node-a")),
     ["annotation must name"]),
    ("delete", Review("DELETE", None, old=keys_of("node-a"), user=plugin_on("node-a")), ["not deleted"]),
    ("token without node", Review("CREATE", keys_of("node-a"), user=plugin_on(None)),
     ["names no node", "may only write", "annotation", "key id"]),
    ("other users are not this policy's business",
     Review("CREATE", keys_of("node-b"), user={"username": "system:admin"}), []),
]


@pytest.mark.parametrize("review,expected", [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_plugin_publishes_only_its_own_nodes_keys(review: Review, expected: list[str]) -> None:
    assert_denied(TOKEN_KEYS, review, expected)


@pytest.mark.parametrize(
    "name",
    ["node-a.k1", "node-a.k123456789", "node-a.kfoo", "node-a.k01", "node-a.k0", "node-a.k1.k2", "node-a.kfoo.k1",
     "node-a.k", "node-a.k1x", "node-a.k1234567890", "node-ab.k1", "node-a.k-1"],
)
def test_key_id_grammar_is_one_in_the_chart_and_the_code(name: str) -> None:
    """The admission policy admits exactly the key ids the code accepts for the writing node."""
    body = keys_of("node-a")
    body["data"] = {f"{name}.pem": next(iter(body["data"].values()))}
    admitted = not TOKEN_KEYS.denials(Review("CREATE", body, user=plugin_on("node-a")))
    assert admitted == (node_of_key_id(name) == "node-a"), name


def test_key_version_pattern_is_the_codes() -> None:
    expression = TOKEN_KEYS.spec["validations"][-1]["expression"]
    assert f"}}{KEY_VERSION_PATTERN}[.]pem$" in expression


def test_key_policy_matches_only_the_key_namespace() -> None:
    selector = TOKEN_KEYS.spec["matchConstraints"]["namespaceSelector"]
    assert selector == {"matchLabels": {"kubernetes.io/metadata.name": "cc-gpu-token-keys"}}
    other = one(render({"attestation": {"keys": {"namespace": "gpu-keys"}}}), "ValidatingAdmissionPolicy",
                "token-keys-own-node")
    assert other["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "gpu-keys"}


def claim(*requests: dict[str, Any], template: bool = False) -> dict[str, Any]:
    devices = {"requests": list(requests)} if requests else None
    spec: dict[str, Any] = {"devices": devices} if devices else {}
    if template:
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "t"},
                "spec": {"spec": spec}}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "c"}, "spec": spec}


def exactly(cls: str) -> dict[str, Any]:
    return {"name": "gpu", "exactly": {"deviceClassName": cls}}


TENANT_CASES = [
    ("claim for the vfio class", claim(exactly("vfio.gpu.cc-gpu.io")), True),
    ("template for the attested class", claim(exactly("attested-vfio.gpu.cc-gpu.io"), template=True), True),
    ("first available includes ours", claim({"name": "gpu", "firstAvailable": [
        {"name": "a", "deviceClassName": "gpu.example.com"},
        {"name": "b", "deviceClassName": "attested-vfio.gpu.cc-gpu.io"}]}), True),
    ("another class", claim(exactly("gpu.example.com")), False),
    ("claim without devices", claim(), False),
    ("template without devices", claim(template=True), False),
]


@pytest.mark.parametrize(("obj", "denied"), [c[1:] for c in TENANT_CASES], ids=[c[0] for c in TENANT_CASES])
def test_gpu_classes_only_in_labelled_namespaces(obj: dict[str, Any], denied: bool) -> None:
    denials = TENANTS.denials(Review("CREATE", obj, namespace="unlabelled"))
    assert bool(denials) is denied
    if denied:
        assert "cc-gpu.io/gpu-tenant=true; unlabelled is not" in denials[0]


def test_the_annotation_set_at_admission_resolves_to_the_pods_gpus(tmp_path: Path) -> None:
    """Admission sets the annotation; prepare writes the per-pod spec; the Go CDI library resolves one to the other."""
    mutated = MUTATING.mutate(Review("CREATE", pod(), uid=UID))
    value = mutated["metadata"]["annotations"]["cdi.k8s.io/cc-gpu"]
    cdi_root = tmp_path / "cdi"
    cdi_root.mkdir()
    assert write_pod_spec(cdi_root, UID, [legacy_nodes(12)]) == value
    consumer = Consumer(build(), tmp_path)
    sandbox = consumer.inject(cdi_root, annotations=mutated["metadata"]["annotations"], nodes=legacy_nodes(12))
    assert sorted(device_paths(sandbox)) == ["/dev/vfio/12", "/dev/vfio/vfio"]


CLAIM_BY_NAME = Policy(one(OBJECTS, "ValidatingAdmissionPolicy", "claim-by-name")["spec"])


def by_name(runtime_class: str | None, *claims: dict[str, str]) -> dict[str, Any]:
    body = pod(runtime_class, claims=False)
    body["spec"]["resourceClaims"] = list(claims)
    return body


CLAIM_BY_NAME_CASES = [
    ("shared claim, confidential pod", by_name("kata-qemu-nvidia-gpu-snp", {"name": "g", "resourceClaimName": "gpu"}),
     []),
    ("shared claim, tdx pod", by_name("kata-qemu-nvidia-gpu-tdx", {"name": "g", "resourceClaimName": "gpu"}), []),
    ("shared claim, runc pod", by_name(None, {"name": "g", "resourceClaimName": "gpu"}),
     ["reference a ResourceClaim by name (gpu) only with a confidential RuntimeClass"]),
    ("shared claim, plain Kata pod", by_name("kata-qemu-nvidia-gpu", {"name": "g", "resourceClaimName": "gpu"}),
     ["only with a confidential RuntimeClass"]),
    ("claim from a template, any pod", by_name(None, {"name": "g", "resourceClaimTemplateName": "t"}), []),
    ("no claims", pod(None, claims=False), []),
]


@pytest.mark.parametrize("body,expected", [c[1:] for c in CLAIM_BY_NAME_CASES], ids=[c[0] for c in CLAIM_BY_NAME_CASES])
def test_pods_reference_claims_by_name_only_when_confidential(body: dict[str, Any], expected: list[str]) -> None:
    assert_denied(CLAIM_BY_NAME, Review("CREATE", body), expected)


def test_claim_by_name_policy_binds_to_tenant_namespaces() -> None:
    binding = one(OBJECTS, "ValidatingAdmissionPolicyBinding", "claim-by-name")["spec"]
    assert binding["matchResources"]["namespaceSelector"] == {"matchLabels": {"cc-gpu.io/gpu-tenant": "true"}}
    assert binding["validationActions"] == ["Deny"]
