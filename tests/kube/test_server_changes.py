"""What the server answers and stores beyond what was sent: DELETE replies per resource, defaulting, canonical forms.

The same cases run against the real kube-apiserver in `tests/cluster/test_differential.py`.
"""

from __future__ import annotations

from typing import Any

import pytest

from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.apiserver import cluster as c
from cc_gpu.kube.client import KubernetesApi
from cc_gpu.kube.quantity import canonical
from tests.kube.conftest import DRIVER, NODE, Http, slice_body

RESOURCE = "/apis/resource.k8s.io/v1"


@pytest.mark.parametrize(
    ("create_path", "obj", "returns_object"),
    [
        pytest.param(f"{RESOURCE}/resourceslices", slice_body("s"), True, id="resourceslice"),
        pytest.param(f"{RESOURCE}/deviceclasses", c.device_class("dc", DRIVER), True, id="deviceclass"),
        pytest.param(
            f"{RESOURCE}/namespaces/default/resourceclaims",
            c.resource_claim("default", "rc", device_class_name="dc"),
            True,
            id="resourceclaim",
        ),
        pytest.param(
            "/api/v1/namespaces/default/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}},
            False,
            id="configmap",
        ),
        pytest.param("/apis/node.k8s.io/v1/runtimeclasses", c.runtime_class("rc", "runc"), False, id="runtimeclass"),
    ],
)
def test_delete_answers_like_the_registry(
    raw: Http, create_path: str, obj: dict[str, Any], returns_object: bool
) -> None:
    created = raw("POST", create_path, obj)
    assert created.code == 201, created.body
    reply = raw("DELETE", f"{create_path}/{obj['metadata']['name']}")
    assert reply.code == 200, reply.body
    if returns_object:
        assert reply.body["kind"] == obj["kind"]
        assert reply.body["metadata"]["uid"] == created.body["metadata"]["uid"]
    else:
        assert reply.body["kind"] == "Status"
        assert reply.body["status"] == "Success"
        assert reply.body["details"]["uid"] == created.body["metadata"]["uid"]


def test_typed_client_delete_of_a_claim(double: ApiServerDouble, kubeconfig: Any) -> None:
    """The official client's typed delete decodes the reply as a ResourceClaim: a `Status` would not decode."""
    from kubernetes import client, config  # noqa: PLC0415

    double.create(c.resource_claim("default", "rc", device_class_name="dc"))
    api_client = config.new_client_from_config(str(kubeconfig))
    deleted = client.ResourceV1Api(api_client).delete_namespaced_resource_claim("rc", "default")
    assert deleted.metadata.name == "rc"


def test_slice_read_back_is_defaulted(api: KubernetesApi) -> None:
    body = slice_body("s", devices=2)
    body["spec"]["devices"][0]["taints"] = [{"key": "cc-gpu.io/unhealthy", "value": "true", "effect": "NoSchedule"}]
    body["spec"]["devices"][0]["capacity"] = {"memory": {"value": "81920Mi"}, "cores": {"value": "1000"}}
    body["spec"]["devices"][1]["capacity"] = {}
    stored = api.create_resource_slice(body)
    first, second = stored["spec"]["devices"]
    assert first["taints"][0]["timeAdded"]  # defaulted by the server
    assert first["capacity"] == {"memory": {"value": "80Gi"}, "cores": {"value": "1k"}}
    assert "capacity" not in second  # an empty map is not stored (omitempty)


def test_empty_slice_has_no_device_list(api: KubernetesApi) -> None:
    body = slice_body("empty", devices=0)
    assert body["spec"]["devices"] == []
    stored = api.create_resource_slice(body)
    assert "devices" not in stored["spec"]
    assert api.list_resource_slices(DRIVER, NODE)[0]["spec"].get("devices") is None


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("0", "0"),
        ("1000", "1k"),
        ("1024", "1024"),
        ("2048Ki", "2Mi"),
        ("1Ki", "1Ki"),
        ("85899345920", "85899345920"),
        ("80000000000", "80G"),
        ("1500m", "1500m"),
        ("1e3", "1e3"),
    ],
)
def test_canonical_quantities(given: str, stored: str) -> None:
    assert canonical(given) == stored
