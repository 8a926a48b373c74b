"""`KubernetesApi` (the production client) against the API-server double: every `KubeApi` call and its errors."""

from __future__ import annotations

import copy
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, dynamic, watch
from kubernetes.config import incluster_config

from cc_gpu.errors import ConfigError, TemporaryError
from cc_gpu.kube import errors
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.apiserver import cluster as c
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
    # Every namespace's claims in one list (the verification service looks a challenge up this way).
    listed = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in api.list_resource_claims()}
    assert ("default", "gpu-claim") in listed


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


def test_kubeconfig_errors_never_quote_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("users:\n- name: u\n  user:\n    token: s3cr3t-t0ken\n  [broken\n")
    with pytest.raises(errors.KubeConfigError) as caught:
        KubernetesApi(path)
    assert "s3cr3t" not in str(caught.value)
    assert "line" in str(caught.value)


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


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda a: a.get_pod("default", ""), id="empty-pod-name"),
        pytest.param(lambda a: a.get_node(""), id="empty-node-name"),
        pytest.param(lambda a: a.get_resource_claim("", "gpu-claim"), id="empty-namespace"),
        pytest.param(lambda a: a.update_config_map("default", {"metadata": {}}), id="body-without-name"),
    ],
)
def test_empty_names_never_become_list_requests(api: KubernetesApi, double: ApiServerDouble, call: object) -> None:
    double.reset_audit()
    with pytest.raises(errors.InvalidError):
        call(api)  # type: ignore[operator]
    assert double.audit == []


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda a: a.get_pod("default", "../../nodes/node-a"), id="pod"),
        pytest.param(lambda a: a.get_node("node-a/status"), id="node-subresource"),
        pytest.param(lambda a: a.get_resource_claim("default", "../../../../api/v1/nodes/node-a"), id="claim"),
    ],
)
def test_names_cannot_escape_their_path(api: KubernetesApi, seeded: Seeded, call: object) -> None:
    with pytest.raises(errors.NotFoundError):
        call(api)  # type: ignore[operator]


def test_the_official_watch_consumes_the_doubles_stream(kubeconfig: Path, double: ApiServerDouble) -> None:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api_client:
        resources = client.ResourceV1Api(api_client)
        double.create(slice_body("before"))
        later = threading.Timer(0.3, lambda: double.create(slice_body("after")))
        later.start()
        seen = []
        stream = watch.Watch().stream(
            resources.list_resource_slice, field_selector=f"spec.nodeName={NODE}", timeout_seconds=1
        )
        for event in stream:
            seen.append((event["type"], event["object"].metadata.name))
        later.join()
    assert seen == [("ADDED", "before"), ("ADDED", "after")]


def test_one_client_serves_many_threads(api: KubernetesApi, double: ApiServerDouble) -> None:
    double.create(c.device_class("vfio-gpu", DRIVER))
    pod = double.create(c.pod("default", "vm", node_name=NODE, runtime_class_name=None))
    for i in range(8):
        claim = double.create(c.resource_claim("default", f"claim-{i}", device_class_name="vfio-gpu"))
        c.allocate(double.store, claim, [c.Allocated("gpu", DRIVER, NODE, f"gpu-{i}")], [pod], node_name=NODE)

    def prepare(i: int) -> str:
        claim = api.get_resource_claim("default", f"claim-{i}")
        api.get_pod("default", "vm")
        device = {"driver": DRIVER, "pool": NODE, "device": f"gpu-{i}"}
        patched = api.patch_resource_claim_status("default", f"claim-{i}", {"status": {"devices": [device]}})
        assert patched["metadata"]["uid"] == claim["metadata"]["uid"]
        return str(patched["status"]["devices"][0]["device"])

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(prepare, range(8))) == [f"gpu-{i}" for i in range(8)]
    assert double.writes("patch", "resourceclaims", succeeded=True) == 8


def test_the_official_dynamic_client_discovers_and_lists(kubeconfig: Path, double: ApiServerDouble) -> None:
    double.create(slice_body("a"))
    with config.new_client_from_config(config_file=str(kubeconfig)) as api_client:
        api = dynamic.DynamicClient(api_client)
        slices = api.resources.get(api_version="resource.k8s.io/v1", kind="ResourceSlice")
        assert [item.metadata.name for item in slices.get().items] == ["a"]
        runtime_classes = api.resources.get(api_version="node.k8s.io/v1", kind="RuntimeClass")
        runtime_classes.create(body={"metadata": {"name": "kata"}, "handler": "kata-qemu-nvidia-gpu-snp"})
        assert runtime_classes.get(name="kata").handler == "kata-qemu-nvidia-gpu-snp"


def test_in_cluster_configuration_from_the_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("s3cr3t-t0ken")
    ca.write_text("not checked until the first request")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    api = KubernetesApi(None)
    assert api.host == "https://10.96.0.1:443"
    assert "s3cr3t" not in repr(vars(api))
    api.close()


def test_claims_of_every_namespace_are_listed_and_watched_from_the_lists_version(
    api: KubernetesApi, double: ApiServerDouble
) -> None:
    """The binding-condition watcher's calls: a list, then a watch resumed from the list's resourceVersion that
    streams each change once; a version the server no longer keeps is an ExpiredError (relist)."""
    double.create(c.device_class("vfio-gpu", DRIVER))
    double.create(c.resource_claim("default", "before", device_class_name="vfio-gpu"))
    items, version = api.watchable_resource_claims()
    assert [i["metadata"]["name"] for i in items] == ["before"] and version
    later = threading.Timer(0.3, lambda: double.create(c.resource_claim("default", "after",
                                                                        device_class_name="vfio-gpu")))
    later.start()
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in api.watch_resource_claims(version, 1)]
    later.join()
    assert events == [("ADDED", "after")]


def test_a_node_lists_and_watches_only_claims_labelled_with_it_and_the_label_patch_is_conditional(
    api: KubernetesApi, double: ApiServerDouble
) -> None:
    """The plugin's label-selected list and watch (binding conditions): a claim labelled for another node is not
    listed; a claim the labeler labels for this node enters the watch as ADDED; the labeler's patch tests the
    resourceVersion it read, so a stale one is refused (InvalidError) and changes nothing."""
    double.create(c.device_class("vfio-gpu", DRIVER))
    double.create(c.resource_claim("default", "other", device_class_name="vfio-gpu"))
    mine = double.create(c.resource_claim("default", "mine", device_class_name="vfio-gpu"))
    api.patch_resource_claim("default", "other", [{"op": "add", "path": "/metadata/labels",
                                                   "value": {"cc-gpu.io/binding-node": "node-b"}}])
    selector = "cc-gpu.io/binding-node=node-a"
    label = {"op": "add", "path": "/metadata/labels", "value": {"cc-gpu.io/binding-node": "node-a"}}
    with pytest.raises(errors.InvalidError):  # a version that is not the stored one: refused, nothing changed
        api.patch_resource_claim("default", "mine", [{"op": "test", "path": "/metadata/resourceVersion",
                                                      "value": "1"}, label])
    items, version = api.watchable_resource_claims(selector)
    assert items == [] and version
    patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": mine["metadata"]["resourceVersion"]}, label]
    later = threading.Timer(0.3, lambda: api.patch_resource_claim("default", "mine", patch))
    later.start()
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in api.watch_resource_claims(version, 1, selector)]
    later.join()
    assert events == [("ADDED", "mine")]


def test_a_claim_watch_from_a_forgotten_version_says_relist(tmp_path: Path) -> None:
    with ApiServerDouble(watch_history=4) as double:
        api = KubernetesApi(double.write_kubeconfig(tmp_path / "kubeconfig"))
        double.create(c.device_class("vfio-gpu", DRIVER))
        _, version = api.watchable_resource_claims()
        for i in range(10):
            double.create(c.resource_claim("default", f"claim-{i}", device_class_name="vfio-gpu"))
        with pytest.raises(errors.ExpiredError):
            list(api.watch_resource_claims(version, 1))
        api.close()
