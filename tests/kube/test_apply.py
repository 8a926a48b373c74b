"""Claim status by server-side apply on the double: ownership per field manager, merge by list-map keys, refusals.

The same cases run against the real kube-apiserver in `tests/cluster/test_differential.py`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cc_gpu.dra.claimstatus import DeviceStatus, apply_device_status, field_manager
from cc_gpu.kube import errors
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.apiserver import cluster as c
from cc_gpu.kube.client import KubernetesApi
from tests.kube.conftest import DRIVER, NODE, Http, Seeded

OTHER_DRIVER = "net.other.example.com"
STATUS = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/gpu-claim/status"
APPLY = "application/apply-patch+yaml"


def condition(
    kind: str, status: str = "True", reason: str = "Done", when: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": "", "lastTransitionTime": when}


def entries(claim: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["driver"], d["pool"], d["device"]): d for d in claim.get("status", {}).get("devices") or []}


def types(claim: dict[str, Any], driver: str = DRIVER, device: str = "gpu-0") -> list[str]:
    return [x["type"] for x in entries(claim)[(driver, NODE, device)].get("conditions") or []]


@pytest.fixture
def two_drivers(double: ApiServerDouble, seeded: Seeded) -> dict[str, Any]:
    """The seeded claim, re-allocated with a second device of this driver and one of another driver."""
    claim = double.store.get(double.store_type("resourceclaims"), "default", "gpu-claim")
    claim.pop("status")
    results = [
        c.Allocated("gpu", DRIVER, NODE, "gpu-0"),
        c.Allocated("gpu", DRIVER, NODE, "gpu-1"),
        c.Allocated("gpu", OTHER_DRIVER, NODE, "nic-0"),
    ]
    rt = double.store_type("resourceclaims")
    fresh = double.store.update(rt, "default", "gpu-claim", lambda cur: {**cur, "status": {}}, subresource="status")
    return c.allocate(double.store, fresh, results, [seeded.kata_pod], node_name=NODE)


def test_writers_own_their_conditions_on_one_device_entry(api: KubernetesApi, two_drivers: dict[str, Any]) -> None:
    """The plugin, an attestation service and binding-condition code each add conditions without erasing others."""
    allocation = copy.deepcopy(two_drivers["status"]["allocation"])
    other = {"driver": OTHER_DRIVER, "pool": NODE, "device": "nic-0", "conditions": [condition("Configured")]}
    api.apply_resource_claim_status("default", "gpu-claim", _body([other]), field_manager=field_manager(OTHER_DRIVER))
    plugin, attester, binder = (field_manager(DRIVER, n) for n in ("kubelet-plugin", "attestation", "binding"))
    apply_device_status(
        api, "default", "gpu-claim", DRIVER, [DeviceStatus(NODE, "gpu-0", (condition("Ready"),))], manager=plugin
    )
    apply_device_status(
        api,
        "default",
        "gpu-claim",
        DRIVER,
        [DeviceStatus(NODE, "gpu-0", (condition("Attested"),), {"attestation": {"ok": True}})],
        manager=attester,
    )
    apply_device_status(
        api, "default", "gpu-claim", DRIVER, [DeviceStatus(NODE, "gpu-0", (condition("Bound"),))], manager=binder
    )
    claim = api.get_resource_claim("default", "gpu-claim")
    assert sorted(types(claim)) == ["Attested", "Bound", "Ready"]
    assert entries(claim)[(DRIVER, NODE, "gpu-0")]["data"] == {"attestation": {"ok": True}}
    assert types(claim, OTHER_DRIVER, "nic-0") == ["Configured"]
    assert claim["status"]["allocation"] == allocation  # never sent, never changed

    # The plugin re-applies with Ready=False: its condition changes, everyone else's stays.
    apply_device_status(
        api,
        "default",
        "gpu-claim",
        DRIVER,
        [DeviceStatus(NODE, "gpu-0", (condition("Ready", "False", "Unbound"),))],
        manager=plugin,
    )
    claim = api.get_resource_claim("default", "gpu-claim")
    ready = next(x for x in entries(claim)[(DRIVER, NODE, "gpu-0")]["conditions"] if x["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unbound")
    assert sorted(types(claim)) == ["Attested", "Bound", "Ready"]
    assert types(claim, OTHER_DRIVER, "nic-0") == ["Configured"]

    # The attestation writer stops saying anything about gpu-0: its condition and its data go, the others stay.
    raw_body = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-1", "conditions": [condition("Attested")]}])
    api.apply_resource_claim_status("default", "gpu-claim", raw_body, field_manager=attester)
    claim = api.get_resource_claim("default", "gpu-claim")
    assert sorted(types(claim)) == ["Bound", "Ready"]
    assert "data" not in entries(claim)[(DRIVER, NODE, "gpu-0")]
    assert types(claim, DRIVER, "gpu-1") == ["Attested"]


def test_reapplying_the_same_status_writes_nothing(api: KubernetesApi, seeded: Seeded) -> None:
    first = apply_device_status(
        api, "default", "gpu-claim", DRIVER, [DeviceStatus(NODE, "gpu-0", (condition("Ready"),))]
    )
    assert first is not None
    again = apply_device_status(
        api,
        "default",
        "gpu-claim",
        DRIVER,
        [DeviceStatus(NODE, "gpu-0", (condition("Ready", when="2026-02-02T00:00:00Z"),))],
        current=first,
    )
    assert again is not None
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]  # same status, same time kept


def test_a_replaced_claim_is_not_written(api: KubernetesApi, seeded: Seeded) -> None:
    body = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition("Ready")]}])
    body["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(errors.InvalidError) as caught:  # kube-apiserver: metadata.uid is immutable (422)
        api.apply_resource_claim_status("default", "gpu-claim", body, field_manager="x")
    assert [c.field for c in caught.value.causes] == ["metadata.uid"]


def test_conflicts_without_force_and_takeover_with_force(raw: Http, seeded: Seeded) -> None:
    first = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition("Ready")]}])
    assert raw("PATCH", f"{STATUS}?fieldManager=a", first, APPLY).code == 200
    second = _body(
        [{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition("Ready", "False", "Other")]}]
    )
    refused = raw("PATCH", f"{STATUS}?fieldManager=b", second, APPLY)
    assert refused.code == 409, refused.body
    assert refused.body["reason"] == "Conflict"
    taken = raw("PATCH", f"{STATUS}?fieldManager=b&force=true", second, APPLY)
    assert taken.code == 200, taken.body
    # `a` no longer owns Ready: when it stops applying it, b's condition stays.
    assert raw("PATCH", f"{STATUS}?fieldManager=a", _body([]), APPLY).code == 200
    assert types(raw("GET", STATUS[: -len("/status")]).body) == ["Ready"]


@pytest.mark.parametrize(
    ("query", "content_type", "path", "code"),
    [
        pytest.param("", APPLY, STATUS, 422, id="no-field-manager"),
        pytest.param("?fieldManager=m&force=true", "application/merge-patch+json", STATUS, 422, id="force-on-merge"),
        pytest.param("?fieldManager=m", APPLY, "/api/v1/namespaces/default/configmaps/x", 415, id="not-modelled"),
    ],
)
def test_apply_requests_the_server_refuses(
    raw: Http, seeded: Seeded, query: str, content_type: str, path: str, code: int
) -> None:
    body = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition("Ready")]}])
    reply = raw("PATCH", path + query, body, content_type)
    assert reply.code == code, reply.body


@pytest.mark.parametrize(
    ("conditions", "field"),
    [
        pytest.param([condition("Ready", reason="no spaces allowed")], "conditions[0].reason", id="reason"),
        pytest.param([condition("Ready", status="Yes")], "conditions[0].status", id="status"),
        pytest.param(
            [{k: v for k, v in condition("Ready").items() if k != "lastTransitionTime"}],
            "conditions[0].lastTransitionTime",
            id="time",
        ),
        pytest.param([condition("not a type")], "conditions[0].type", id="type"),
        pytest.param([condition(f"C{i}") for i in range(9)], "conditions", id="nine"),
    ],
)
def test_condition_validation(raw: Http, seeded: Seeded, conditions: list[dict[str, Any]], field: str) -> None:
    body = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": conditions}])
    reply = raw("PATCH", f"{STATUS}?fieldManager=m", body, APPLY)
    assert reply.code == 422, reply.body
    assert any(cause["field"].endswith(field) for cause in reply.body["details"]["causes"]), reply.body


def test_eight_conditions_across_writers_and_not_nine(raw: Http, seeded: Seeded) -> None:
    for manager in ("a", "b"):
        conditions = [condition(f"{manager.upper()}{i}") for i in range(4)]
        body = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": conditions}])
        assert raw("PATCH", f"{STATUS}?fieldManager={manager}", body, APPLY).code == 200
    body = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition("C9")]}])
    reply = raw("PATCH", f"{STATUS}?fieldManager=c", body, APPLY)
    assert reply.code == 422, reply.body


def test_status_of_a_device_not_allocated_is_refused(raw: Http, seeded: Seeded) -> None:
    body = _body([{"driver": DRIVER, "pool": NODE, "device": "gpu-7", "conditions": [condition("Ready")]}])
    assert raw("PATCH", f"{STATUS}?fieldManager=m", body, APPLY).code == 422


def test_deallocation_drops_the_device_statuses(api: KubernetesApi, double: ApiServerDouble, seeded: Seeded) -> None:
    apply_device_status(api, "default", "gpu-claim", DRIVER, [DeviceStatus(NODE, "gpu-0", (condition("Ready"),))])
    claim = api.get_resource_claim("default", "gpu-claim")
    claim["status"] = {}  # what the controller does when the pods are gone: allocation, reservedFor and devices
    claim["status"]["devices"] = [
        {"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition("Ready")]}
    ]
    stored = api.update_resource_claim_status("default", "gpu-claim", claim)
    assert "devices" not in stored["status"]


def _body(devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "gpu-claim", "namespace": "default"},
        "status": {"devices": devices},
    }


def test_data_is_merged_key_by_key_between_writers(raw: Http, seeded: Seeded) -> None:
    """`data` is a RawExtension, a free-form map to the server's apply: each writer owns the keys it sets."""
    mine = {"driver": DRIVER, "pool": NODE, "device": "gpu-0", "data": {"attestation": {"ok": True, "n": 1}}}
    theirs = {"driver": DRIVER, "pool": NODE, "device": "gpu-0", "data": {"binding": {"ready": True}}}
    assert raw("PATCH", f"{STATUS}?fieldManager=a", _body([mine]), APPLY).code == 200
    assert raw("PATCH", f"{STATUS}?fieldManager=b", _body([theirs]), APPLY).code == 200
    claim = raw("GET", STATUS[: -len("/status")]).body
    assert entries(claim)[(DRIVER, NODE, "gpu-0")]["data"] == {
        "attestation": {"ok": True, "n": 1},
        "binding": {"ready": True},
    }
    fewer = {**mine, "data": {"attestation": {"ok": False}}}
    assert raw("PATCH", f"{STATUS}?fieldManager=a", _body([fewer]), APPLY).code == 200
    claim = raw("GET", STATUS[: -len("/status")]).body
    assert entries(claim)[(DRIVER, NODE, "gpu-0")]["data"] == {"attestation": {"ok": False}, "binding": {"ready": True}}


def _allocate_with_bytes(raw: Http, parameters_text: str) -> str:
    """Write the seeded claim's allocation again, its opaque parameters serialised exactly as given."""
    claim = raw("GET", STATUS[: -len("/status")]).body
    raw("PUT", STATUS, {**claim, "status": {}})
    claim = raw("GET", STATUS[: -len("/status")]).body
    claim["status"] = {
        "allocation": {
            "devices": {
                "results": [{"request": "gpu", "driver": DRIVER, "pool": NODE, "device": "gpu-0"}],
                "config": [
                    {"source": "FromClass", "requests": ["gpu"], "opaque": {"driver": DRIVER, "parameters": "@P@"}}
                ],
            }
        },
    }
    text = json.dumps(claim, separators=(",", ":")).replace('"@P@"', parameters_text)
    assert raw("PUT", STATUS, text.encode()).code == 200
    return str(claim["metadata"]["uid"])


def test_status_written_by_json_patch_when_apply_meets_unsorted_bytes(
    raw: Http, api: KubernetesApi, seeded: Seeded
) -> None:
    """Keys out of order (a Go struct marshalled): apply is refused, the writer falls back to a JSON patch."""
    uid = _allocate_with_bytes(raw, '{"mode":"vfio","kind":"GpuConfig"}')
    bound = {"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition("Bound")]}
    refused = raw("PATCH", f"{STATUS}?fieldManager=binder", _body([bound]), APPLY)
    assert refused.code == 422, refused.body
    merged = raw("PATCH", STATUS, {"status": {"devices": [bound]}}, "application/merge-patch+json")
    assert merged.code == 200, merged.body
    stored = apply_device_status(
        api, "default", "gpu-claim", DRIVER, [DeviceStatus(NODE, "gpu-0", (condition("Ready"),))], uid=uid
    )
    assert stored is not None
    assert sorted(types(stored)) == ["Bound", "Ready"]


def test_status_not_written_over_pretty_printed_bytes(
    raw: Http, api: KubernetesApi, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    """Whitespace inside the stored parameters: no JSON write can keep them; the writer says why and gives up."""
    uid = _allocate_with_bytes(raw, '{"kind": "GpuConfig", "mode": "vfio"}')
    stored = apply_device_status(
        api, "default", "gpu-claim", DRIVER, [DeviceStatus(NODE, "gpu-0", (condition("Ready"),))], uid=uid
    )
    assert stored is None
    assert "whitespace inside" in caplog.text
    assert "devices" not in raw("GET", STATUS[: -len("/status")]).body["status"]


def test_a_python_client_put_of_the_claim_is_refused(raw: Http, api: KubernetesApi, seeded: Seeded) -> None:
    """Why the driver never PUTs a claim: its client re-serialises the allocation's parameters (with spaces), so
    the claim it read back, unchanged, no longer has the allocation's bytes."""
    _allocate_with_bytes(raw, '{"kind":"GpuConfig","mode":"vfio"}')  # canonical, as kube-scheduler writes it
    claim = api.get_resource_claim("default", "gpu-claim")
    with pytest.raises(errors.InvalidError) as caught:
        api.update_resource_claim_status("default", "gpu-claim", claim)
    assert [c.field for c in caught.value.causes] == ["status.allocation"]
