"""`KubernetesApi` (the production client) against the API-server double: every `KubeApi` call and its errors."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.errors import ConfigError, TemporaryError
from cc_gpu.kube import errors
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi, error_from_status
from tests.kube.conftest import DRIVER, NODE, Seeded, slice_body


def test_reads_return_wire_form_dicts(api: KubernetesApi, seeded: Seeded) -> None:
    claim = api.get_resource_claim("default", "gpu-claim")
    assert claim["metadata"]["uid"] == seeded.claim["metadata"]["uid"]
    assert claim["status"]["allocation"]["devices"]["results"][0]["device"] == "gpu-0"
    assert claim["status"]["reservedFor"][0]["uid"] == seeded.kata_pod["metadata"]["uid"]
    assert api.get_pod("default", "vm")["spec"]["runtimeClassName"] == "kata-snp"
    assert api.get_runtime_class("kata-snp")["handler"] == "kata-qemu-nvidia-gpu-snp"
    assert api.get_node(NODE)["metadata"]["name"] == NODE
    params = api.get_device_class("vfio-gpu")["spec"]["config"][0]["opaque"]["parameters"]
    assert params == {"apiVersion": "cc.example.com/v1", "kind": "GpuConfig"}


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda a: a.get_resource_claim("default", "missing"), id="claim"),
        pytest.param(lambda a: a.get_pod("default", "missing"), id="pod"),
        pytest.param(lambda a: a.get_runtime_class("missing"), id="runtime-class"),
        pytest.param(lambda a: a.get_node("missing"), id="node"),
        pytest.param(lambda a: a.get_device_class("missing"), id="device-class"),
        pytest.param(lambda a: a.get_config_map("default", "missing"), id="config-map"),
        pytest.param(lambda a: a.get_pod("no-such-namespace", "x"), id="namespace"),
    ],
)
def test_missing_objects_are_not_found(api: KubernetesApi, call: object) -> None:
    with pytest.raises(errors.NotFoundError) as caught:
        call(api)  # type: ignore[operator]
    assert caught.value.code == 404


def test_slice_lifecycle_with_field_selectors_and_preconditions(api: KubernetesApi) -> None:
    created = api.create_resource_slice(slice_body("a", devices=2))
    other_node = slice_body("b")
    other_node["spec"]["nodeName"] = "node-b"
    other_node["spec"]["pool"]["name"] = "node-b"
    api.create_resource_slice(other_node)
    other_driver = slice_body("c")
    other_driver["spec"]["driver"] = "other.example.com"
    api.create_resource_slice(other_driver)

    listed = api.list_resource_slices(DRIVER, NODE)
    assert [s["metadata"]["name"] for s in listed] == ["a"]

    changed = copy.deepcopy(listed[0])
    changed["spec"]["pool"]["generation"] = 2
    updated = api.update_resource_slice(changed)
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert updated["metadata"]["generation"] == 2

    with pytest.raises(errors.ConflictError):
        api.update_resource_slice(changed)  # the resourceVersion it carries is now stale
    with pytest.raises(errors.ConflictError):
        api.delete_resource_slice("a", uid=created["metadata"]["uid"], resource_version=_rv(created))
    with pytest.raises(errors.ConflictError):
        api.delete_resource_slice("a", uid="another-uid", resource_version=updated["metadata"]["resourceVersion"])
    api.delete_resource_slice("a", uid=updated["metadata"]["uid"], resource_version=_rv(updated))
    assert api.list_resource_slices(DRIVER, NODE) == []
    with pytest.raises(errors.NotFoundError):
        api.delete_resource_slice("a", uid=updated["metadata"]["uid"], resource_version="1")


def _rv(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


def test_generate_name_and_already_exists(api: KubernetesApi) -> None:
    body = slice_body()
    body["metadata"] = {"generateName": f"{NODE}-{DRIVER}-"}
    first, second = api.create_resource_slice(body), api.create_resource_slice(body)
    assert first["metadata"]["name"].startswith(f"{NODE}-{DRIVER}-")
    assert first["metadata"]["name"] != second["metadata"]["name"]
    api.create_resource_slice(slice_body("fixed"))
    with pytest.raises(errors.AlreadyExistsError) as caught:
        api.create_resource_slice(slice_body("fixed"))
    assert caught.value.reason == "AlreadyExists"


def test_invalid_slice_carries_the_servers_field_causes(api: KubernetesApi) -> None:
    body = slice_body()
    body["spec"]["devices"][0]["attributes"]["driverVersion"] = {"version": "v1"}
    with pytest.raises(errors.InvalidError) as caught:
        api.create_resource_slice(body)
    assert caught.value.code == 422
    assert [c.field for c in caught.value.causes] == ["spec.devices[0].attributes[driverVersion].version"]


def test_unknown_fields_are_refused_before_sending(api: KubernetesApi, double: ApiServerDouble) -> None:
    body = slice_body()
    body["spec"]["devices"][0]["colour"] = "blue"
    with pytest.raises(errors.InvalidError) as caught:
        api.create_resource_slice(body)
    assert any("colour" in c.field for c in caught.value.causes)
    assert double.writes() == 0


def test_claim_status_update_and_merge_patch(api: KubernetesApi, seeded: Seeded) -> None:
    claim = api.get_resource_claim("default", "gpu-claim")
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "Prepared",
        "message": "bound to vfio-pci",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    claim["status"]["devices"] = [{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [ready]}]
    claim["spec"]["devices"]["requests"][0]["name"] = "ignored"  # the status subresource never changes the spec
    updated = api.update_resource_claim_status("default", "gpu-claim", claim)
    assert updated["status"]["devices"][0]["conditions"][0]["type"] == "Ready"
    assert updated["spec"]["devices"]["requests"][0]["name"] == "gpu"

    with pytest.raises(errors.ConflictError):
        api.update_resource_claim_status("default", "gpu-claim", claim)

    patched = api.patch_resource_claim_status("default", "gpu-claim", {"status": {"devices": None}})
    assert "devices" not in patched["status"]
    assert patched["status"]["allocation"] == seeded.claim["status"]["allocation"]

    stranger = {"driver": DRIVER, "pool": NODE, "device": "gpu-7"}
    with pytest.raises(errors.InvalidError) as caught:
        api.patch_resource_claim_status("default", "gpu-claim", {"status": {"devices": [stranger]}})
    assert caught.value.causes[0].field == "status.devices[0]"


def test_events_and_config_maps(api: KubernetesApi, seeded: Seeded) -> None:
    event = api.create_event(
        "default",
        {
            "metadata": {"generateName": "gpu-claim."},
            "involvedObject": {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "namespace": "default",
                "name": "gpu-claim",
                "uid": seeded.claim["metadata"]["uid"],
            },
            "reason": "RuntimeClassRefused",
            "message": "pod default/plain has no runtimeClassName",
            "type": "Warning",
            "source": {"component": DRIVER},
        },
    )
    assert event["metadata"]["name"].startswith("gpu-claim.")

    created = api.create_config_map("kube-system", {"metadata": {"name": "keys"}, "data": {"k1": "pem"}})
    fetched = api.get_config_map("kube-system", "keys")
    assert fetched["data"] == {"k1": "pem"}
    fetched["data"]["k2"] = "pem2"
    updated = api.update_config_map("kube-system", fetched)
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(errors.ConflictError):
        api.update_config_map("kube-system", fetched)
    with pytest.raises(errors.AlreadyExistsError):
        api.create_config_map("kube-system", {"metadata": {"name": "keys"}})


def test_unreachable_server_is_a_temporary_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ApiServerDouble() as double:
        kubeconfig = double.write_kubeconfig(tmp_path / "kc")
    kubeconfig.write_text(kubeconfig.read_text().replace(double_url_port(kubeconfig), str(port)))
    api = KubernetesApi(kubeconfig, request_timeout=2)
    api._api_client.configuration.retries = 0
    with pytest.raises(errors.ApiUnavailableError) as caught:
        api.get_node(NODE)
    assert isinstance(caught.value, TemporaryError)


def double_url_port(kubeconfig: Path) -> str:
    text = kubeconfig.read_text()
    return text.split("http://127.0.0.1:")[1].split('"')[0]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing-file"),
        pytest.param("this: [is not: a kubeconfig", id="not-yaml"),
        pytest.param('{"apiVersion": "v1", "kind": "Config", "clusters": []}', id="no-context"),
    ],
)
def test_bad_kubeconfig_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    with pytest.raises(errors.KubeConfigError) as caught:
        KubernetesApi(path)
    assert isinstance(caught.value, ConfigError)


def test_no_in_cluster_service_account_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(errors.KubeConfigError):
        KubernetesApi(None)


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        pytest.param(404, '{"kind":"Status","reason":"NotFound","message":"x"}', errors.NotFoundError, id="404"),
        pytest.param(409, '{"kind":"Status","reason":"AlreadyExists"}', errors.AlreadyExistsError, id="409-exists"),
        pytest.param(409, '{"kind":"Status","reason":"Conflict"}', errors.ConflictError, id="409-conflict"),
        pytest.param(422, '{"kind":"Status","reason":"Invalid"}', errors.InvalidError, id="422"),
        pytest.param(400, '{"kind":"Status","reason":"BadRequest"}', errors.InvalidError, id="400"),
        pytest.param(401, "", errors.ForbiddenError, id="401"),
        pytest.param(403, '{"kind":"Status","reason":"Forbidden"}', errors.ForbiddenError, id="403"),
        pytest.param(429, "", errors.ApiUnavailableError, id="429"),
        pytest.param(500, "not json", errors.ApiUnavailableError, id="500-not-json"),
        pytest.param(503, "", errors.ApiUnavailableError, id="503"),
        pytest.param(418, "", errors.ApiError, id="other"),
    ],
)
def test_status_codes_map_to_typed_errors(code: int, body: str, expected: type[errors.ApiError]) -> None:
    error = error_from_status(code, body, {"Retry-After": "3"})
    assert type(error) is expected
    assert error.code == code
    if isinstance(error, errors.ApiUnavailableError):
        assert error.retry_after == 3.0
