"""The pod-gate controller: gives each held Kata GPU pod its own CDI device name, then lets it be scheduled.

Released Kata cold-plugs the CDI devices named in the sandbox's `cdi.k8s.io/` annotations, so a Kata GPU pod must
carry `cdi.k8s.io/cc-gpu: cc-gpu.io/vfio=pod-<its UID>` before it reaches a node (the plugin defines that device at
prepare). Admission cannot write it: mutating admission runs before the API server assigns the UID, and admission
CEL has no request UID. So the chart's mutating policy holds such pods with the scheduling gate
`cc-gpu.io/cdi-device` and the label `cc-gpu.io/cdi-device=pending`, and this controller releases them: one JSON
patch that tests the pod's UID and resourceVersion, adds the annotation from the stored UID, and removes the gate and
the label. The guard policy admits that annotation value only, and admits removing the gate only with it.

It keeps no state: it lists the held pods by label (a server-side selection, so each pass costs as many pods as are
waiting, not the cluster's), releases each, and sleeps. A conflict (the pod changed) is retried next pass; several
replicas are safe because the patch is conditional.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from cc_gpu.dra import cdi
from cc_gpu.kube.api import JsonObject
from cc_gpu.kube.errors import ApiError, NotFoundError

log = logging.getLogger(__name__)

GATE = "cc-gpu.io/cdi-device"
LABEL = "cc-gpu.io/cdi-device"
LABEL_SELECTOR = f"{LABEL}=pending"


class PodGateApi(Protocol):
    def list_pods(self, label_selector: str) -> list[JsonObject]: ...

    def patch_pod(self, namespace: str, name: str, operations: list[JsonObject]) -> JsonObject: ...


def device_value(pod_uid: str) -> str:
    """The annotation value naming the pod's own device (the plugin's per-pod spec defines it)."""
    return f"{cdi.KIND}={cdi.POD_DEVICE_PREFIX}{pod_uid}"


def release_patch(pod: Mapping[str, Any]) -> list[JsonObject]:
    """The JSON patch that releases `pod`: conditional on its UID and resourceVersion, so a pod replaced or changed
    meanwhile is left for the next pass."""
    metadata = pod.get("metadata") or {}
    uid, version = str(metadata.get("uid", "")), str(metadata.get("resourceVersion", ""))
    if not uid or not version:
        raise ValueError("the pod has no uid or resourceVersion")
    ops: list[JsonObject] = [
        {"op": "test", "path": "/metadata/uid", "value": uid},
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
    ]
    annotations = metadata.get("annotations")
    if annotations is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {cdi.POD_ANNOTATION: device_value(uid)}})
    else:
        ops.append({"op": "add", "path": f"/metadata/annotations/{_pointer(cdi.POD_ANNOTATION)}",
                    "value": device_value(uid)})
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    for index, gate in enumerate(gates):
        if gate.get("name") == GATE:
            ops += [{"op": "test", "path": f"/spec/schedulingGates/{index}/name", "value": GATE},
                    {"op": "remove", "path": f"/spec/schedulingGates/{index}"}]
            break
    if LABEL in (metadata.get("labels") or {}):
        ops.append({"op": "remove", "path": f"/metadata/labels/{_pointer(LABEL)}"})
    return ops


def release_all(api: PodGateApi) -> dict[str, int]:
    """One pass: release every held pod; returns counts by outcome."""
    counts = {"released": 0, "retry": 0}
    for pod in api.list_pods(LABEL_SELECTOR):
        metadata = pod.get("metadata") or {}
        namespace, name = str(metadata.get("namespace", "")), str(metadata.get("name", ""))
        try:
            api.patch_pod(namespace, name, release_patch(pod))
        except NotFoundError:
            continue
        except (ApiError, ValueError) as e:
            log.warning("could not release pod; retrying next pass",
                        extra={"pod": f"{namespace}/{name}", "error": str(e)})
            counts["retry"] += 1
            continue
        log.info("released pod with its cc-gpu CDI device", extra={"pod": f"{namespace}/{name}"})
        counts["released"] += 1
    return counts


def run(api: PodGateApi, stop: threading.Event, *, interval_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
    """Release held pods every `interval_s` until `stop` is set; back off while the API server fails."""
    delay = interval_s
    while not stop.is_set():
        try:
            release_all(api)
            delay = interval_s
        except ApiError as e:
            log.warning("listing held pods failed", extra={"error": str(e)})
            delay = min(max_backoff_s, delay * 2)
        stop.wait(delay)


def _pointer(key: str) -> str:
    """`key` as one RFC 6901 JSON-pointer segment."""
    return key.replace("~", "~0").replace("/", "~1")
