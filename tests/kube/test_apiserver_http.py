"""What the double serves over plain HTTP: reads, selectors, subresources, patches, watch, audit."""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.apiserver import cluster as c
from tests.kube.conftest import DRIVER, NODE, Http, Seeded, slice_body

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
PODS = "/api/v1/namespaces/default/pods"
CLAIM = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/gpu-claim"


def _names(reply_body: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in reply_body["items"]]


def test_server_stamps_metadata_and_lists_like_the_real_server(raw: Http) -> None:
    created = raw("POST", SLICES, slice_body()).body
    meta = created["metadata"]
    assert created["apiVersion"] == "resource.k8s.io/v1"
    assert created["kind"] == "ResourceSlice"
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    listed = raw("GET", SLICES).body
    assert listed["kind"] == "ResourceSliceList"
    assert int(listed["metadata"]["resourceVersion"]) >= int(meta["resourceVersion"])
    assert "kind" not in listed["items"][0]  # list items carry no type meta on the wire


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param("labelSelector=tier%3Dgpu", ["a", "b"], id="equals"),
        pytest.param("labelSelector=tier%21%3Dgpu", ["c"], id="not-equals-includes-missing"),
        pytest.param("labelSelector=tier%20in%20(gpu,cpu)", ["a", "b"], id="in"),
        pytest.param("labelSelector=tier%20notin%20(gpu)", ["c"], id="notin"),
        pytest.param("labelSelector=zone", ["b"], id="exists"),
        pytest.param("labelSelector=%21zone", ["a", "c"], id="does-not-exist"),
        pytest.param("labelSelector=tier%3Dgpu,zone%3Deast", ["b"], id="and"),
        pytest.param("labelSelector=rank%3E1", ["b"], id="greater-than"),
        pytest.param("fieldSelector=spec.nodeName%3Dnode-b", ["c"], id="field-node"),
        pytest.param("fieldSelector=spec.driver%3Dgpu.cc.example.com,spec.nodeName%3Dnode-a", ["a", "b"], id="fields"),
        pytest.param("fieldSelector=metadata.name%21%3Da", ["b", "c"], id="field-not-equals"),
        pytest.param("", ["a", "b", "c"], id="none"),
    ],
)
def test_label_and_field_selectors(raw: Http, selector: str, expected: list[str]) -> None:
    for name, labels, node in [
        ("a", {"tier": "gpu", "rank": "1"}, NODE),
        ("b", {"tier": "gpu", "zone": "east", "rank": "2"}, NODE),
        ("c", {}, "node-b"),
    ]:
        body = slice_body(name)
        body["metadata"]["labels"] = labels
        body["spec"]["nodeName"] = node
        assert raw("POST", SLICES, body).code == 201
    assert _names(raw("GET", f"{SLICES}?{selector}").body) == expected


def test_status_subresource_and_main_resource_are_kept_apart(raw: Http, seeded: Seeded) -> None:
    claim = raw("GET", CLAIM).body
    without_status = dict(claim)
    without_status.pop("status")
    without_status["metadata"]["labels"] = {"touched": "yes"}
    updated = raw("PUT", CLAIM, without_status).body
    assert updated["status"] == claim["status"]  # a PUT on the main resource ignores status
    assert updated["metadata"]["labels"] == {"touched": "yes"}

    status_put = dict(updated)
    status_put["metadata"] = {**updated["metadata"], "labels": {"touched": "again"}}
    status_put["status"] = {**updated["status"], "devices": [{"driver": DRIVER, "pool": NODE, "device": "gpu-0"}]}
    after = raw("PUT", f"{CLAIM}/status", status_put).body
    assert after["metadata"]["labels"] == {"touched": "yes"}  # a status PUT ignores metadata changes
    assert after["status"]["devices"][0]["device"] == "gpu-0"
    assert "generation" not in after["metadata"]  # kube-apiserver keeps no generation for ResourceClaims


def test_pods_have_no_status_in_the_main_resource_either(raw: Http, seeded: Seeded) -> None:
    reply = raw("PATCH", f"{PODS}/vm", {"status": {"phase": "Running"}}, "application/merge-patch+json")
    assert reply.code == 200
    assert "phase" not in (reply.body.get("status") or {})
    reply = raw("PATCH", f"{PODS}/vm/status", {"status": {"phase": "Running"}}, "application/merge-patch+json")
    assert reply.body["status"]["phase"] == "Running"


def test_a_write_that_changes_nothing_keeps_the_resource_version(raw: Http, double: ApiServerDouble) -> None:
    created = raw("POST", SLICES, slice_body()).body
    path = f"{SLICES}/{created['metadata']['name']}"
    same = raw("PUT", path, created).body
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert double.store.revision == int(created["metadata"]["resourceVersion"])


def test_strategic_merge_patch_merges_reserved_for_by_uid(raw: Http, seeded: Seeded) -> None:
    newcomer = {"resource": "pods", "name": "second", "uid": "11111111-2222-3333-4444-555555555555"}
    reply = raw(
        "PATCH", f"{CLAIM}/status", {"status": {"reservedFor": [newcomer]}}, "application/strategic-merge-patch+json"
    )
    assert [r["name"] for r in reply.body["status"]["reservedFor"]] == ["vm", "second"]
    gone = {"uid": newcomer["uid"], "$patch": "delete"}
    reply = raw(
        "PATCH", f"{CLAIM}/status", {"status": {"reservedFor": [gone]}}, "application/strategic-merge-patch+json"
    )
    assert [r["name"] for r in reply.body["status"]["reservedFor"]] == ["vm"]
    merged = raw("PATCH", f"{CLAIM}/status", {"status": {"reservedFor": [newcomer]}}, "application/merge-patch+json")
    assert [r["name"] for r in merged.body["status"]["reservedFor"]] == ["second"]  # a merge patch replaces lists


def test_json_patch(raw: Http, seeded: Seeded) -> None:
    ops = [
        {"op": "test", "path": "/status/reservedFor/0/name", "value": "vm"},
        {"op": "add", "path": "/status/devices", "value": [{"driver": DRIVER, "pool": NODE, "device": "gpu-0"}]},
    ]
    reply = raw("PATCH", f"{CLAIM}/status", ops, "application/json-patch+json")
    assert reply.code == 200
    assert reply.body["status"]["devices"][0]["device"] == "gpu-0"
    failing = [{"op": "test", "path": "/status/reservedFor/0/name", "value": "someone-else"}]
    assert raw("PATCH", f"{CLAIM}/status", failing, "application/json-patch+json").code == 422


def test_dry_run_validates_without_storing(raw: Http, double: ApiServerDouble) -> None:
    reply = raw("POST", f"{SLICES}?dryRun=All", slice_body())
    assert reply.code == 201
    assert raw("GET", SLICES).body["items"] == []
    bad = slice_body()
    bad["spec"]["nodeName"] = ""
    assert raw("POST", f"{SLICES}?dryRun=All", bad).code == 422


def test_discovery_and_health(raw: Http) -> None:
    assert raw("GET", "/version").body["minor"] == "37"
    assert raw("GET", "/healthz").code == 200
    groups = {g["name"] for g in raw("GET", "/apis").body["groups"]}
    assert {"resource.k8s.io", "node.k8s.io"} <= groups


def _watch_lines(double: ApiServerDouble, path: str, count: int) -> list[dict[str, Any]]:
    host, port = double.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    events = []
    while len(events) < count:
        line = response.readline()
        if not line:
            break
        events.append(json.loads(line))
    conn.close()
    return events


def test_watch_streams_changes_that_match_the_selector(raw: Http, double: ApiServerDouble) -> None:
    raw("POST", SLICES, slice_body("before"))
    other = slice_body("elsewhere")
    other["spec"]["nodeName"] = "node-b"
    results: list[dict[str, Any]] = []
    watcher = threading.Thread(
        target=lambda: results.extend(
            _watch_lines(double, f"{SLICES}?watch=true&fieldSelector=spec.nodeName%3D{NODE}&timeoutSeconds=5", 3)
        )
    )
    watcher.start()
    while not any(e.verb == "watch" for e in double.audit):
        threading.Event().wait(0.01)
    raw("POST", SLICES, other)
    created = raw("POST", SLICES, slice_body("after")).body
    raw("DELETE", f"{SLICES}/after", {"preconditions": {"uid": created["metadata"]["uid"]}})
    watcher.join(timeout=10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in results] == [
        ("ADDED", "before"),
        ("ADDED", "after"),
        ("DELETED", "after"),
    ]


def test_watch_from_a_resource_version_and_when_history_is_gone() -> None:
    with ApiServerDouble(watch_history=16) as double:
        _watch_from_a_resource_version(Http(double.url), double)


def _watch_from_a_resource_version(raw: Http, double: ApiServerDouble) -> None:
    first = raw("POST", SLICES, slice_body("one")).body
    raw("POST", SLICES, slice_body("two"))
    since = first["metadata"]["resourceVersion"]
    events = _watch_lines(double, f"{SLICES}?watch=1&resourceVersion={since}&timeoutSeconds=1", 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "two")]
    for i in range(20):  # more changes than the watch history keeps
        double.store.update(double.store_type("resourceslices"), "", "two", lambda o, i=i: _relabel(o, i))
    expired = _watch_lines(double, f"{SLICES}?watch=1&resourceVersion={since}&timeoutSeconds=1", 1)
    assert expired[0]["type"] == "ERROR"
    assert expired[0]["object"]["code"] == 410


def _relabel(obj: dict[str, Any], i: int) -> dict[str, Any]:
    obj["metadata"]["labels"] = {"n": str(i)}
    return obj


def test_audit_counts_requests_by_verb_and_resource(raw: Http, double: ApiServerDouble, seeded: Seeded) -> None:
    double.reset_audit()
    raw("GET", CLAIM)
    raw("GET", SLICES)
    raw("POST", SLICES, slice_body())
    raw("POST", SLICES, slice_body())  # 409
    raw("PATCH", f"{CLAIM}/status", {"status": {"devices": []}}, "application/merge-patch+json")
    assert [(e.verb, e.resource, e.subresource, e.code) for e in double.audit] == [
        ("get", "resourceclaims", "", 200),
        ("list", "resourceslices", "", 200),
        ("create", "resourceslices", "", 201),
        ("create", "resourceslices", "", 409),
        ("patch", "resourceclaims", "status", 200),
    ]
    assert double.writes() == 3
    assert double.writes(succeeded=True) == 2
    assert double.writes("create", "resourceslices") == 2
    assert double.writes(resource="resourceclaims") == 1


def test_concurrent_writers_get_distinct_names_and_versions(raw: Http, double: ApiServerDouble) -> None:
    body = slice_body()
    body["metadata"] = {"generateName": "node-a-"}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: raw("POST", SLICES, body), range(32)))
    assert {r.code for r in replies} == {201}
    assert len({r.body["metadata"]["name"] for r in replies}) == 32
    assert len({r.body["metadata"]["resourceVersion"] for r in replies}) == 32


def test_scheduler_play_builds_objects_the_schemas_accept(double: ApiServerDouble) -> None:
    double.create(c.node("n2", {"cc.example.com/passthrough": "true"}))
    double.create(c.runtime_class("runc", "runc"))
    double.create(c.device_class("plain", DRIVER))
    claim = double.create(c.resource_claim("default", "two", device_class_name="plain", requests=("a", "b")))
    pod = double.create(c.pod("default", "p", node_name="n2", runtime_class_name="runc", claims=["two"]))
    admin = c.Allocated("b", DRIVER, "n2", "gpu-1", admin_access=True)
    config = [{"source": "FromClass", "requests": [], "opaque": {"driver": DRIVER, "parameters": {"a": 1}}}]
    allocated = c.allocate(
        double.store, claim, [c.Allocated("a", DRIVER, "n2", "gpu-0"), admin], [pod], node_name="n2", config=config
    )
    assert allocated["status"]["allocation"]["devices"]["results"][1]["adminAccess"] is True
    stored = [{k: v for k, v in entry.items() if v != []} for entry in config]  # empty lists vanish (omitempty)
    assert allocated["status"]["allocation"]["devices"]["config"] == stored


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        pytest.param("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", id="already-canonical"),
        pytest.param("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00Z", id="numeric-offset"),
        pytest.param("2026-01-01T02:00:00.750+02:00", "2026-01-01T00:00:00Z", id="offset-and-fraction"),
    ],
)
def test_timestamps_are_stored_as_the_real_server_encodes_them(
    raw: Http, seeded: Seeded, sent: str, stored: str
) -> None:
    condition = {"type": "Ready", "status": "True", "reason": "Prepared", "message": "", "lastTransitionTime": sent}
    device = {"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition], "data": {"time": "soon"}}
    reply = raw("PATCH", f"{CLAIM}/status", {"status": {"devices": [device]}}, "application/merge-patch+json")
    assert reply.code == 200, reply.body
    assert reply.body["status"]["devices"][0]["conditions"][0]["lastTransitionTime"] == stored
    assert reply.body["status"]["devices"][0]["data"] == {"time": "soon"}  # free-form data is never reinterpreted
    version = reply.body["metadata"]["resourceVersion"]
    again = raw("PATCH", f"{CLAIM}/status", {"status": {"devices": [device]}}, "application/merge-patch+json")
    assert again.body["metadata"]["resourceVersion"] == version


def test_an_unparseable_timestamp_is_a_bad_request(raw: Http, seeded: Seeded) -> None:
    condition = {"type": "Ready", "status": "True", "reason": "R", "message": "", "lastTransitionTime": "yesterday"}
    device = {"driver": DRIVER, "pool": NODE, "device": "gpu-0", "conditions": [condition]}
    reply = raw("PATCH", f"{CLAIM}/status", {"status": {"devices": [device]}}, "application/merge-patch+json")
    assert reply.code == 400
    assert "status.devices[0].conditions[0].lastTransitionTime" in reply.body["message"]


def test_delete_collection_by_field_selector_as_the_kubelet_does_at_start(raw: Http, double: ApiServerDouble) -> None:
    for name, node in [("mine-1", NODE), ("mine-2", NODE), ("theirs", "node-b")]:
        body = slice_body(name)
        body["spec"]["nodeName"] = node
        raw("POST", SLICES, body)
    reply = raw("DELETE", f"{SLICES}?fieldSelector=spec.nodeName%3D{NODE}")
    assert reply.code == 200
    assert sorted(i["metadata"]["name"] for i in reply.body["items"]) == ["mine-1", "mine-2"]
    assert _names(raw("GET", SLICES).body) == ["theirs"]
    assert double.writes("deletecollection", "resourceslices") == 1


def test_a_stopped_double_can_start_again_and_serve_watches() -> None:
    double = ApiServerDouble()
    double.start()
    double.stop()
    with double:
        raw = Http(double.url)
        raw("POST", SLICES, slice_body("x"))
        events = _watch_lines(double, f"{SLICES}?watch=1&timeoutSeconds=1", 1)
        assert events[0]["type"] == "ADDED"


def test_a_filtered_watch_sees_objects_enter_and_leave_its_selector(raw: Http, double: ApiServerDouble) -> None:
    created = raw("POST", SLICES, slice_body("s")).body
    since = created["metadata"]["resourceVersion"]
    path = f"{SLICES}/s"
    for tier in ("gpu", "gpu", "cpu"):
        patch = {"metadata": {"labels": {"tier": tier, "n": str(len(double.audit))}}}
        raw("PATCH", path, patch, "application/merge-patch+json")
    events = _watch_lines(
        double, f"{SLICES}?watch=1&resourceVersion={since}&labelSelector=tier%3Dgpu&timeoutSeconds=1", 3
    )
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
