"""The double refuses what the real API server refuses, with the real server's codes and Status replies."""

from __future__ import annotations

import copy
import http.client
from collections.abc import Callable
from typing import Any

import pytest

from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.apiserver import cluster as c
from tests.kube.conftest import DRIVER, NODE, Http, Seeded, slice_body

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims"

Mutate = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutate:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[last] = value

    return mutate


def _many_devices(n: int) -> Mutate:
    return lambda body: body["spec"].update(devices=[{"name": f"gpu-{i}"} for i in range(n)])


def _many_attributes(n: int) -> Mutate:
    return _set("spec.devices.0.attributes", {f"a{i}": {"int": i} for i in range(n)})


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        pytest.param(_set("spec.devices.0.colour", "blue"), 400, "", id="unknown-field"),
        pytest.param(_set("spec.pool.generation", "one"), 400, "", id="wrong-json-type"),
        pytest.param(_set("spec.driver", "Not_A_DNS_Name"), 422, "spec.driver", id="driver-not-dns"),
        pytest.param(_set("spec.driver", "d" * 64 + ".example.com"), 422, "spec.driver", id="driver-too-long"),
        pytest.param(_set("spec.allNodes", True), 422, "spec", id="two-node-selections"),
        pytest.param(_set("spec.nodeName", ""), 422, "spec", id="no-node-selection"),
        pytest.param(_many_devices(129), 422, "spec.devices", id="129-devices"),
        pytest.param(_many_attributes(32), 422, "spec.devices[0]", id="33-attributes-and-capacities"),
        pytest.param(_set("spec.devices.0.name", "GPU_0"), 422, "spec.devices[0].name", id="device-name-not-label"),
        pytest.param(
            _set("spec.devices.0.attributes.type", {"string": "x" * 65}),
            422,
            "spec.devices[0].attributes[type].string",
            id="string-over-64",
        ),
        pytest.param(
            _set("spec.devices.0.attributes.driverVersion", {"version": "535.104"}),
            422,
            "spec.devices[0].attributes[driverVersion].version",
            id="version-not-semver",
        ),
        pytest.param(
            _set("spec.devices.0.attributes.type", {"string": "gpu", "int": 1}),
            422,
            "spec.devices[0].attributes[type]",
            id="two-attribute-values",
        ),
        pytest.param(
            _set("spec.devices.0.attributes", {"resource.kubernetes.io/" + "x" * 33: {"int": 1}}),
            422,
            "spec.devices[0].attributes[resource.kubernetes.io/" + "x" * 33 + "]",
            id="identifier-over-32",
        ),
        pytest.param(_set("metadata.name", "Bad_Name"), 422, "metadata.name", id="object-name"),
        pytest.param(_set("kind", "DeviceClass"), 400, "", id="kind-mismatch"),
        pytest.param(_set("metadata.resourceVersion", "7"), 400, "", id="resource-version-on-create"),
    ],
)
def test_create_refuses_bad_slices(raw: Http, double: ApiServerDouble, mutate: Mutate, code: int, field: str) -> None:
    body = slice_body(devices=1)
    mutate(body)
    reply = raw("POST", SLICES, body)
    assert reply.code == code, reply.body
    assert reply.body["kind"] == "Status"
    assert reply.body["status"] == "Failure"
    assert reply.body["code"] == code
    assert reply.body["reason"] == ("Invalid" if code == 422 else "BadRequest")
    if field:
        assert field in [cause["field"] for cause in reply.body["details"]["causes"]]
        assert reply.body["details"]["kind"] == "ResourceSlice"
    assert raw("GET", SLICES).body["items"] == []
    assert double.writes(succeeded=True) == 0


def test_unknown_field_message_names_the_field(raw: Http) -> None:
    body = slice_body()
    body["spec"]["devices"][0]["colour"] = "blue"
    reply = raw("POST", SLICES, body)
    assert reply.body["message"] == 'strict decoding error: unknown field "spec.devices[0].colour"'


def test_64_devices_with_taints_is_the_limit(raw: Http) -> None:
    body = slice_body(devices=65)
    body["spec"]["devices"][0]["taints"] = [{"key": "cc.example.com/unhealthy", "effect": "NoSchedule"}]
    assert raw("POST", SLICES, body).code == 422
    body["spec"]["devices"] = body["spec"]["devices"][:64]
    assert raw("POST", SLICES, body).code == 201
    assert raw("POST", SLICES, slice_body("full", devices=128)).code == 201


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param("spec.driver", "other.example.com", id="driver"),
        pytest.param("spec.pool.name", "another-pool", id="pool-name"),
        pytest.param("spec.nodeName", "node-b", id="node-name"),
    ],
)
def test_slice_immutable_fields(raw: Http, path: str, value: str) -> None:
    created = raw("POST", SLICES, slice_body()).body
    changed = copy.deepcopy(created)
    _set(path, value)(changed)
    reply = raw("PUT", f"{SLICES}/{created['metadata']['name']}", changed)
    assert reply.code == 422
    assert reply.body["details"]["causes"][0] == {
        "reason": "FieldValueInvalid",
        "message": f'Invalid value: "{value}": field is immutable',
        "field": path,
    }
    patch = {"spec": {"pool": {"name": value}}} if path == "spec.pool.name" else {"spec": {path.split(".")[1]: value}}
    reply = raw("PATCH", f"{SLICES}/{created['metadata']['name']}", patch, "application/merge-patch+json")
    assert reply.code == 422


def test_claim_spec_and_runtime_class_handler_are_immutable(raw: Http, seeded: Seeded) -> None:
    claim = raw("GET", f"{CLAIMS}/gpu-claim").body
    claim["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] = "other"
    reply = raw("PUT", f"{CLAIMS}/gpu-claim", claim)
    assert reply.code == 422
    assert reply.body["details"]["causes"][0]["field"] == "spec"
    rc_path = "/apis/node.k8s.io/v1/runtimeclasses/kata-snp"
    reply = raw("PATCH", rc_path, {"handler": "runc"}, "application/merge-patch+json")
    assert reply.code == 422
    assert reply.body["message"].startswith('RuntimeClass.node.k8s.io "kata-snp" is invalid: handler:')


def test_stale_resource_version_is_a_conflict(raw: Http) -> None:
    created = raw("POST", SLICES, slice_body()).body
    path = f"{SLICES}/{created['metadata']['name']}"
    first = copy.deepcopy(created)
    first["spec"]["pool"]["generation"] = 2
    assert raw("PUT", path, first).code == 200
    second = copy.deepcopy(created)
    second["spec"]["pool"]["generation"] = 3
    reply = raw("PUT", path, second)
    assert reply.code == 409
    assert reply.body["reason"] == "Conflict"
    assert reply.body["message"] == (
        f'Operation cannot be fulfilled on resourceslices.resource.k8s.io "{created["metadata"]["name"]}": '
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    stale_patch = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"devices": []}}
    assert raw("PATCH", path, stale_patch, "application/merge-patch+json").code == 409
    assert raw("GET", path).body["spec"]["pool"]["generation"] == 2


@pytest.mark.parametrize(
    ("preconditions", "code"),
    [
        pytest.param({"uid": "0000"}, 409, id="wrong-uid"),
        pytest.param({"resourceVersion": "1"}, 409, id="stale-resource-version"),
        pytest.param({}, 200, id="none"),
    ],
)
def test_delete_preconditions(raw: Http, preconditions: dict[str, str], code: int) -> None:
    created = raw("POST", SLICES, slice_body()).body
    path = f"{SLICES}/{created['metadata']['name']}"
    reply = raw("DELETE", path, {"preconditions": preconditions})
    assert reply.code == code
    assert raw("GET", path).code == (200 if code == 409 else 404)


def test_already_exists_and_missing_namespace(raw: Http) -> None:
    assert raw("POST", SLICES, slice_body("one")).code == 201
    reply = raw("POST", SLICES, slice_body("one"))
    assert (reply.code, reply.body["reason"]) == (409, "AlreadyExists")
    assert reply.body["message"] == 'resourceslices.resource.k8s.io "one" already exists'
    claim = c.resource_claim("nowhere", "x", device_class_name="vfio-gpu")
    reply = raw("POST", "/apis/resource.k8s.io/v1/namespaces/nowhere/resourceclaims", claim)
    assert (reply.code, reply.body["message"]) == (404, 'namespaces "nowhere" not found')


@pytest.mark.parametrize(
    ("devices", "field"),
    [
        pytest.param([{"driver": DRIVER, "pool": NODE, "device": "gpu-9"}], "status.devices[0]", id="not-allocated"),
        pytest.param(
            [{"driver": "other.example.com", "pool": NODE, "device": "gpu-0"}], "status.devices[0]", id="other-driver"
        ),
        pytest.param(
            [{"driver": DRIVER, "pool": NODE, "device": "gpu-0"}] * 2, "status.devices[1]", id="duplicate-device"
        ),
        pytest.param(
            [
                {
                    "driver": DRIVER,
                    "pool": NODE,
                    "device": "gpu-0",
                    "conditions": [
                        {
                            "type": f"C{i}",
                            "status": "True",
                            "reason": "R",
                            "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z",
                        }
                        for i in range(9)
                    ],
                }
            ],
            "status.devices[0].conditions",
            id="nine-conditions",
        ),
        pytest.param(
            [{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "data": {"blob": "x" * 11000}}],
            "status.devices[0].data",
            id="data-over-10KiB",
        ),
    ],
)
def test_claim_device_status_rules(raw: Http, seeded: Seeded, devices: list[Any], field: str) -> None:
    reply = raw("PATCH", f"{CLAIMS}/gpu-claim/status", {"status": {"devices": devices}}, "application/merge-patch+json")
    assert reply.code == 422, reply.body
    assert field in [cause["field"] for cause in reply.body["details"]["causes"]]


def test_allocation_cannot_be_changed_once_set(raw: Http, seeded: Seeded) -> None:
    patch = {
        "status": {
            "allocation": {
                "devices": {"results": [{"request": "gpu", "driver": DRIVER, "pool": NODE, "device": "gpu-1"}]}
            }
        }
    }
    reply = raw("PATCH", f"{CLAIMS}/gpu-claim/status", patch, "application/merge-patch+json")
    assert reply.code == 422
    assert reply.body["details"]["causes"][0]["field"] == "status.allocation"


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "code"),
    [
        pytest.param("GET", "/apis/resource.k8s.io/v1/widgets", None, "", 404, id="unknown-resource"),
        pytest.param(
            "GET",
            "/apis/resource.k8s.io/v1/namespaces/default/resourceslices",
            None,
            "",
            404,
            id="cluster-scoped-under-namespace",
        ),
        pytest.param("POST", SLICES, b"{not json", "application/json", 400, id="not-json"),
        pytest.param("POST", SLICES, [1, 2], "application/json", 400, id="not-an-object"),
        pytest.param("POST", SLICES, b"kind: ResourceSlice", "application/yaml", 415, id="yaml-body"),
        pytest.param("PATCH", f"{SLICES}/x", {"a": 1}, "application/apply-patch+yaml", 415, id="server-side-apply"),
        pytest.param("PUT", SLICES, {}, "application/json", 405, id="put-on-collection"),
        pytest.param("GET", f"{SLICES}?fieldSelector=spec.pool.name%3Dx", None, "", 400, id="unsupported-field-label"),
        pytest.param("GET", f"{SLICES}?labelSelector=a%20in%20b", None, "", 400, id="bad-label-selector"),
        pytest.param("POST", f"{SLICES}?dryRun=Some", {}, "application/json", 400, id="bad-dry-run"),
        pytest.param("GET", f"{SLICES}/x/status", None, "", 404, id="no-such-object"),
        pytest.param("GET", f"{SLICES}?watch=1&timeoutSeconds=soon", None, "", 400, id="watch-bad-timeout"),
        pytest.param("GET", f"{SLICES}?watch=1&resourceVersion=abc", None, "", 400, id="watch-bad-version"),
        pytest.param("GET", f"{SLICES}?watch=1&fieldSelector=spec.devices%3Dx", None, "", 400, id="watch-bad-field"),
    ],
)
def test_malformed_requests(raw: Http, method: str, path: str, body: Any, content_type: str, code: int) -> None:
    reply = raw(method, path, body, content_type or "application/json")
    assert reply.code == code, reply.body
    assert reply.body["kind"] == "Status"


def test_event_must_live_in_its_objects_namespace(raw: Http, seeded: Seeded) -> None:
    event = {
        "metadata": {"generateName": "gpu-claim."},
        "involvedObject": {"kind": "ResourceClaim", "namespace": "default", "name": "gpu-claim"},
        "reason": "Refused",
        "message": "m",
        "type": "Warning",
    }
    reply = raw("POST", "/api/v1/namespaces/kube-system/events", event)
    assert reply.code == 422
    assert reply.body["details"]["causes"][0]["field"] == "involvedObject.namespace"
    assert raw("POST", "/api/v1/namespaces/default/events", event).code == 201


def test_pod_runtime_class_cannot_change(raw: Http, seeded: Seeded) -> None:
    reply = raw(
        "PATCH",
        "/api/v1/namespaces/default/pods/vm",
        {"spec": {"runtimeClassName": None}},
        "application/merge-patch+json",
    )
    assert reply.code == 422
    assert reply.body["details"]["causes"][0]["field"] == "spec.runtimeClassName"


def test_a_failure_inside_the_double_is_a_500_and_the_server_keeps_serving(
    raw: Http, double: ApiServerDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(double.store, "get", broken)
    reply = raw("GET", f"{SLICES}/x")
    assert (reply.code, reply.body["reason"]) == (500, "InternalError")
    monkeypatch.undo()
    assert raw("GET", f"{SLICES}/x").code == 404


def _claim_with(mutate: Mutate) -> dict[str, Any]:
    claim = c.resource_claim(
        "default",
        "new-claim",
        device_class_name="vfio-gpu",
        requests=("gpu", "other"),
        config=[{"requests": ["gpu"], "opaque": {"driver": DRIVER, "parameters": {"kind": "GpuConfig"}}}],
    )
    mutate(claim)
    return claim


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(_set("spec.devices.requests.0.name", "Not_A_Label"), "spec.devices.requests[0].name", id="name"),
        pytest.param(_set("spec.devices.requests.1.name", "gpu"), "spec.devices.requests[1].name", id="duplicate"),
        pytest.param(
            _set("spec.devices.requests.0.firstAvailable", [{"name": "a", "deviceClassName": "vfio-gpu"}]),
            "spec.devices.requests[0]",
            id="exactly-and-first-available",
        ),
        pytest.param(
            _set("spec.devices.requests.0.exactly.allocationMode", "Some"),
            "spec.devices.requests[0].exactly.allocationMode",
            id="allocation-mode",
        ),
        pytest.param(
            # 0 is not refused: the server defaults a zero count to 1 before validating (SetDefaults_ExactDeviceRequest)
            _set("spec.devices.requests.0.exactly.count", -1),
            "spec.devices.requests[0].exactly.count",
            id="count-negative",
        ),
        pytest.param(
            _set("spec.devices.config.0.requests", ["missing"]),
            "spec.devices.config[0].requests[0]",
            id="config-request",
        ),
        pytest.param(
            _set("spec.devices.config.0.opaque.parameters", {"blob": "x" * 10240}),
            "spec.devices.config[0].opaque.parameters",
            id="parameters-over-10KiB",
        ),
        pytest.param(
            _set("spec.devices.config.0.opaque.driver", "UPPER.example.com"),
            "spec.devices.config[0].opaque.driver",
            id="config-driver",
        ),
    ],
)
def test_claim_spec_rules(raw: Http, seeded: Seeded, mutate: Mutate, field: str) -> None:
    reply = raw("POST", CLAIMS, _claim_with(mutate))
    assert reply.code == 422, reply.body
    assert field in [cause["field"] for cause in reply.body["details"]["causes"]]


def test_a_valid_claim_with_config_is_accepted(raw: Http, seeded: Seeded) -> None:
    assert raw("POST", CLAIMS, _claim_with(lambda claim: None)).code == 201


def test_device_class_config_rules(raw: Http) -> None:
    body = c.device_class("big", DRIVER, {"blob": "x" * 10240})
    reply = raw("POST", "/apis/resource.k8s.io/v1/deviceclasses", body)
    assert reply.code == 422
    assert reply.body["details"]["causes"][0]["field"] == "spec.config[0].opaque.parameters"


def test_an_oversized_body_is_refused(double: ApiServerDouble) -> None:
    host, port = double.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", SLICES)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(4 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    response.read()
    conn.close()
