"""API cases that run unchanged against the API-server double and the real kube-apiserver.

Each case is a function of a `Target` (plain HTTP+JSON with an identity allowed everything) and a fresh namespace;
it returns what it observed: per request, the HTTP code, the `Status` reason and the fields of its causes, and the
object read back with what differs between any two servers or runs removed (uids, resourceVersions, timestamps,
managedFields). `tests/kube/test_cases.py` runs them on the double; `tests/cluster/test_differential.py` runs them
on both servers and requires the same observations, except where the double refuses on purpose (`DOUBLE_REFUSES`).

Cluster-scoped names carry the namespace, so the cases can share one real cluster.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any, Protocol

DRIVER = "gpu.cc.example.com"
OTHER_DRIVER = "net.other.example.com"
POOL = "node-a"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
RESOURCE = "/apis/resource.k8s.io/v1"
T0 = "2026-01-01T00:00:00Z"


class Reply(Protocol):
    code: int
    body: Any


class Target(Protocol):
    def __call__(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any: ...


Observation = dict[str, Any]
Case = Callable[[Target, str], list[Observation]]

_VOLATILE_META = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "deletionTimestamp")


def scrub(value: Any) -> Any:
    """An object without what legitimately differs between servers and runs; timestamps become `<time>`."""
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            if key in _VOLATILE_META:
                continue
            if key in ("lastTransitionTime", "timeAdded", "time") and isinstance(child, str):
                out[key] = "<time>"
            elif key in ("uid",):
                continue
            else:
                out[key] = scrub(child)
        return out
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


def observe(reply: Any, *, read_back: Any = None) -> Observation:
    body = reply.body if isinstance(reply.body, dict) else {}
    seen: Observation = {"code": reply.code}
    if body.get("kind") == "Status":
        seen["status"] = body.get("status")
        seen["reason"] = body.get("reason", "")
        causes = (body.get("details") or {}).get("causes") or []
        seen["fields"] = sorted({str(c.get("field", "")) for c in causes})
        if body.get("status") == "Success":
            seen["details_kind"] = (body.get("details") or {}).get("kind")
    elif 200 <= reply.code < 300:
        seen["kind"] = body.get("kind")
        seen["object"] = scrub(body) if read_back is None else scrub(read_back)
    return seen


def condition(kind: str, status: str = "True", reason: str = "Done") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": "", "lastTransitionTime": T0}


# -- building blocks ---------------------------------------------------------------------------------------------


def claims_path(ns: str) -> str:
    return f"{RESOURCE}/namespaces/{ns}/resourceclaims"


def allocated_claim(
    target: Target, ns: str, devices: tuple[tuple[str, str], ...] = ((DRIVER, "gpu-0"),), name: str = "claim"
) -> dict[str, Any]:
    """A claim with an allocation written through the status subresource, as the scheduler writes it."""
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": f"gpus-{ns}"}}]}},
    }
    created = target("POST", claims_path(ns), claim)
    assert created.code == 201, created.body
    body = copy.deepcopy(created.body)
    body["status"] = {
        "allocation": {
            "devices": {
                "results": [{"request": "gpu", "driver": d, "pool": POOL, "device": dev} for d, dev in devices],
                "config": [
                    {
                        "source": "FromClass",
                        "requests": ["gpu"],
                        "opaque": {"driver": DRIVER, "parameters": {"kind": "GpuConfig", "mode": "vfio"}},
                    }
                ],
            },
        },
    }
    # Go's canonical JSON (compact, keys sorted), as kube-scheduler writes it: opaque parameters are kept as bytes.
    stored = target(
        "PUT", f"{claims_path(ns)}/{name}/status", json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    )
    assert stored.code == 200, stored.body
    return stored.body  # type: ignore[no-any-return]


def apply_status(
    target: Target,
    ns: str,
    manager: str,
    devices: list[dict[str, Any]],
    *,
    force: bool = True,
    name: str = "claim",
    extra: dict[str, Any] | None = None,
) -> Any:
    body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns, **(extra or {})},
        "status": {"devices": devices},
    }
    query = f"?fieldManager={manager}" + ("&force=true" if force else "")
    return target("PATCH", f"{claims_path(ns)}/{name}/status{query}", body, content_type=APPLY)


def device(dev: str, *conditions: dict[str, Any], driver: str = DRIVER, **fields: Any) -> dict[str, Any]:
    return {"driver": driver, "pool": POOL, "device": dev, "conditions": list(conditions), **fields}


def read_status(target: Target, ns: str, name: str = "claim") -> Any:
    reply = target("GET", f"{claims_path(ns)}/{name}")
    return scrub((reply.body or {}).get("status"))


def slice_body(name: str, devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": DRIVER,
            "nodeName": POOL,
            "pool": {"name": name, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


# -- the cases ---------------------------------------------------------------------------------------------------


def writers_share_a_device_entry(target: Target, ns: str) -> list[Observation]:
    """Three field managers on one device entry, another driver's entry beside it, the allocation untouched."""
    allocated_claim(target, ns, ((DRIVER, "gpu-0"), (DRIVER, "gpu-1"), (OTHER_DRIVER, "nic-0")))
    out = []
    steps = [
        ("other", [device("nic-0", condition("Configured"), driver=OTHER_DRIVER)]),
        ("plugin", [device("gpu-0", condition("Ready"))]),
        ("attester", [device("gpu-0", condition("Attested"), data={"attestation": {"ok": True, "gpus": [1, 2]}})]),
        ("binder", [device("gpu-0", condition("Bound"))]),
        ("plugin", [device("gpu-0", condition("Ready", "False", "Unbound"))]),
        ("attester", [device("gpu-1", condition("Attested"))]),
        ("plugin", []),
    ]
    for manager, devices in steps:
        reply = apply_status(target, ns, manager, devices)
        out.append({**observe(reply), "object": None, "status": read_status(target, ns)})
    return out


def apply_conflicts(target: Target, ns: str) -> list[Observation]:
    allocated_claim(target, ns)
    ready = [device("gpu-0", condition("Ready"))]
    other = [device("gpu-0", condition("Ready", "False", "Other"))]
    return [
        observe(apply_status(target, ns, "a", ready, force=False)),
        {**observe(apply_status(target, ns, "b", other, force=False)), "object": None},
        {**observe(apply_status(target, ns, "b", other, force=True)), "object": None},
        {**observe(apply_status(target, ns, "a", [], force=False)), "object": None, "status": read_status(target, ns)},
    ]


def apply_refusals(target: Target, ns: str) -> list[Observation]:
    claim = allocated_claim(target, ns)
    ready = [device("gpu-0", condition("Ready"))]
    path = f"{claims_path(ns)}/claim/status"
    body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "claim"},
        "status": {"devices": ready},
    }
    wrong_uid = {"uid": "00000000-0000-0000-0000-000000000000"}
    return [
        observe(target("PATCH", path, body, content_type=APPLY)),  # no fieldManager
        observe(target("PATCH", f"{path}?fieldManager=m&force=true", {"status": {}}, content_type=MERGE)),
        observe(apply_status(target, ns, "m", ready, extra=wrong_uid)),
        observe(apply_status(target, ns, "m", [device("gpu-7", condition("Ready"))])),  # not allocated
        {**observe(apply_status(target, ns, "m", ready, extra={"uid": claim["metadata"]["uid"]})), "object": None},
    ]


def condition_validation(target: Target, ns: str) -> list[Observation]:
    allocated_claim(target, ns)
    no_time = {k: v for k, v in condition("Ready").items() if k != "lastTransitionTime"}
    bad = [
        [condition("Ready", reason="no spaces")],
        [condition("Ready", status="Yes")],
        [no_time],
        [condition("not a type")],
        [{**condition("Ready"), "observedGeneration": -1}],
        [condition(f"C{i}") for i in range(9)],
    ]
    out = [observe(apply_status(target, ns, "m", [device("gpu-0", *conditions)])) for conditions in bad]
    for manager in ("a", "b"):
        four = [condition(f"{manager.upper()}{i}") for i in range(4)]
        out.append({**observe(apply_status(target, ns, manager, [device("gpu-0", *four)])), "object": None})
    out.append(observe(apply_status(target, ns, "c", [device("gpu-0", condition("C9"))])))
    out.append(observe(apply_status(target, ns, "d", [device("gpu-0", condition("Ready"), data=["not", "object"])])))
    return out


def deallocation_drops_device_status(target: Target, ns: str) -> list[Observation]:
    allocated_claim(target, ns)
    apply_status(target, ns, "plugin", [device("gpu-0", condition("Ready"))])
    claim = target("GET", f"{claims_path(ns)}/claim").body
    claim["status"].pop("allocation")
    return [observe(target("PUT", f"{claims_path(ns)}/claim/status", claim))]


def claim_defaults(target: Target, ns: str) -> list[Observation]:
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "defaults"},
        "spec": {
            "devices": {
                "requests": [{"name": "gpu", "exactly": {"deviceClassName": "x", "count": 0}}],
                "config": [{"requests": [], "opaque": {"driver": DRIVER, "parameters": {"a": 1}}}],
                "constraints": [],
            }
        },
    }
    return [observe(target("POST", claims_path(ns), claim))]


def slice_defaults(target: Target, ns: str) -> list[Observation]:
    taint = {"key": "cc-gpu.io/unhealthy", "value": "true", "effect": "NoSchedule"}
    devices = [
        {
            "name": "gpu-0",
            "attributes": {"type": {"string": "gpu"}},
            "taints": [taint],
            "capacity": {"memory": {"value": "81920Mi"}, "cores": {"value": "1000"}, "bytes": {"value": "85899345920"}},
        },
        {"name": "gpu-1", "attributes": {}, "capacity": {}},
    ]
    name = f"defaults-{ns}"
    created = target("POST", f"{RESOURCE}/resourceslices", slice_body(name, devices))
    empty = target("POST", f"{RESOURCE}/resourceslices", slice_body(f"empty-{ns}", []))
    read = target("GET", f"{RESOURCE}/resourceslices/{name}")
    out = [observe(created), observe(empty), observe(read)]
    # Sent back as read, the taint keeps its time: a no-op update (same resourceVersion).
    again = target("PUT", f"{RESOURCE}/resourceslices/{name}", read.body)
    out.append(
        {
            "code": again.code,
            "unchanged": again.body["metadata"]["resourceVersion"] == read.body["metadata"]["resourceVersion"],
        }
    )
    for path in (f"{RESOURCE}/resourceslices/{name}", f"{RESOURCE}/resourceslices/empty-{ns}"):
        target("DELETE", path)
    return out


def delete_replies(target: Target, ns: str) -> list[Observation]:
    objects = [
        (f"{RESOURCE}/resourceslices", slice_body(f"del-{ns}", [])),
        (
            f"{RESOURCE}/deviceclasses",
            {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": f"del-{ns}"}, "spec": {}},
        ),
        (
            claims_path(ns),
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": "del"},
                "spec": {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "x"}}]}},
            },
        ),
        (
            f"{RESOURCE}/namespaces/{ns}/resourceclaimtemplates",
            {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaimTemplate",
                "metadata": {"name": "del"},
                "spec": {"spec": {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "x"}}]}}},
            },
        ),
        (f"/api/v1/namespaces/{ns}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "del"}}),
        (
            "/apis/node.k8s.io/v1/runtimeclasses",
            {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": f"del-{ns}"},
                "handler": "runc",
            },
        ),
    ]
    out = []
    for path, body in objects:
        created = target("POST", path, body)
        assert created.code == 201, created.body
        out.append(observe(target("DELETE", f"{path}/{body['metadata']['name']}")))
    return out


def allocation_bytes(target: Target, ns: str) -> list[Observation]:
    """Which status writes the server accepts, by how the allocation's opaque parameters were serialised."""
    out = []
    params = {"kind": "GpuConfig", "mode": "vfio", "attestation": {"required": True, "policy": "strict"}}
    forms = {
        "canonical": json.dumps(params, sort_keys=True, separators=(",", ":")),
        "unsorted": json.dumps(dict(reversed(list(params.items()))), separators=(",", ":")),
        "spaced": json.dumps(params),
    }
    ready = [device("gpu-0", condition("Ready"))]
    writes = {
        "apply": lambda path: target(
            "PATCH", f"{path}?fieldManager=m&force=true", _apply(ns, path.split("/")[-2], ready), content_type=APPLY
        ),
        "strategic": lambda path: target(
            "PATCH", path, {"status": {"devices": ready}}, content_type="application/strategic-merge-patch+json"
        ),
        "merge": lambda path: target("PATCH", path, {"status": {"devices": ready}}, content_type=MERGE),
        "json-patch": lambda path: target(
            "PATCH",
            path,
            [{"op": "add", "path": "/status/devices", "value": ready}],
            content_type="application/json-patch+json",
        ),
        "python-put": lambda path: target("PUT", path, target("GET", path).body),  # json.dumps: spaced
    }
    for form, text in forms.items():
        for how, write in writes.items():
            name = f"{form}-{how}"
            claim = {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": name},
                "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": f"gpus-{ns}"}}]}},
            }
            created = target("POST", claims_path(ns), claim).body
            created["status"] = {
                "allocation": {
                    "devices": {
                        "results": [{"request": "gpu", "driver": DRIVER, "pool": POOL, "device": "gpu-0"}],
                        "config": [
                            {
                                "source": "FromClass",
                                "requests": ["gpu"],
                                "opaque": {"driver": DRIVER, "parameters": "@PARAMS@"},
                            }
                        ],
                    }
                }
            }
            raw = json.dumps(created, separators=(",", ":")).replace('"@PARAMS@"', text)
            path = f"{claims_path(ns)}/{name}/status"
            assert target("PUT", path, raw.encode()).code == 200
            reply = write(path)
            out.append(
                {
                    "write": name,
                    "code": reply.code,
                    "fields": sorted(
                        str(c.get("field")) for c in ((reply.body or {}).get("details") or {}).get("causes") or []
                    )
                    if reply.code >= 400
                    else [],
                }
            )
    return out


def _apply(ns: str, name: str, devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns},
        "status": {"devices": devices},
    }


CASES: dict[str, Case] = {
    "allocation-bytes": allocation_bytes,
    "writers-share-a-device-entry": writers_share_a_device_entry,
    "apply-conflicts": apply_conflicts,
    "apply-refusals": apply_refusals,
    "condition-validation": condition_validation,
    "deallocation-drops-device-status": deallocation_drops_device_status,
    "claim-defaults": claim_defaults,
    "slice-defaults": slice_defaults,
    "delete-replies": delete_replies,
}


def prepare_namespace(target: Target, ns: str) -> None:
    """The namespace and the DeviceClass its claims name."""
    reply = target("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    assert reply.code in (201, 409), reply.body
    device_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": f"gpus-{ns}"},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    reply = target("POST", f"{RESOURCE}/deviceclasses", device_class)
    assert reply.code in (201, 409), reply.body
