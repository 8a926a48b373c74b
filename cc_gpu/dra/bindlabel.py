"""The binding-node labeler: one cluster-level watch of claims, so each node's plugin watches only its own.

ResourceClaims have no field selector for the node a claim is allocated on, so a plugin that watched all claims to
find those waiting on its binding conditions would make the API server send every claim's events to every node
(`benchmarks/bind_watch.py` measured it: the API server's extra CPU grows with claims x nodes). Instead this
controller, which runs once per cluster in the `cc-gpu pod-gate` Deployment, watches every claim and labels each one
allocated to a device of this driver that carries our binding condition with `cc-gpu.io/binding-node=<node>` (the
pool, which is the node's name). Each node's plugin lists and watches claims with the label selector
`cc-gpu.io/binding-node=<its node>`: the server filters, so a node receives only its own claims' events.

The label is set when a claim is allocated (the scheduler then waits in PreBind, so the one extra write sits inside
the wait it polls every few seconds) and moved when the claim is allocated to another node (the old node's watch then
sees the claim leave its selection, a DELETED event: it releases the early bind). A deallocated claim keeps its label:
its node sees the deallocation and releases. The patch is conditional on the claim's UID and resourceVersion, so
several replicas are safe; a conflict waits for the next event or relist. The chart's `pod-gate-claims` admission
policy limits what this controller may change on a claim to this one label, with a value naming a pool of the claim's
own allocation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from cc_gpu.dra.bindcfg import READY_CONDITION
from cc_gpu.errors import CcGpuError
from cc_gpu.kube.api import JsonObject, KubeApi
from cc_gpu.kube.errors import ApiError, ExpiredError, InvalidError, NotFoundError

log = logging.getLogger("cc_gpu.dra.bindlabel")

LABEL = "cc-gpu.io/binding-node"


def selector(node: str) -> str:
    """The label selector of one node's claims."""
    return f"{LABEL}={node}"


def node_of(claim: Mapping[str, Any], driver: str) -> str | None:
    """The node (pool) whose plugin must bind `claim` early: its allocation results of `driver` that wait on our
    binding condition; None when there is none (or they name more than one pool: not a node-local device)."""
    allocation = (claim.get("status") or {}).get("allocation") or {}
    pools = {str(r.get("pool")) for r in (allocation.get("devices") or {}).get("results") or []
             if r.get("driver") == driver and READY_CONDITION in (r.get("bindingConditions") or [])}
    return pools.pop() if len(pools) == 1 else None


def label_patch(claim: Mapping[str, Any], node: str) -> list[JsonObject]:
    """The JSON patch that sets the label, conditional on the claim's UID and resourceVersion."""
    meta = claim.get("metadata") or {}
    uid, version = str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))
    if not uid or not version:
        raise ValueError("the claim has no uid or resourceVersion")
    ops: list[JsonObject] = [{"op": "test", "path": "/metadata/uid", "value": uid},
                             {"op": "test", "path": "/metadata/resourceVersion", "value": version}]
    if meta.get("labels") is None:
        ops.append({"op": "add", "path": "/metadata/labels", "value": {LABEL: node}})
    else:
        ops.append({"op": "add", "path": "/metadata/labels/" + LABEL.replace("~", "~0").replace("/", "~1"),
                    "value": node})
    return ops


class ClaimLabeler:
    """Watch every claim once; label those a node must bind early with that node."""

    def __init__(self, kube: KubeApi, driver: str, resync_seconds: float = 60.0) -> None:
        self.kube = kube
        self.driver = driver
        self.resync_seconds = resync_seconds
        self.labelled = 0

    def offer(self, claim: Mapping[str, Any], *, retry: bool = True) -> bool:
        """Label `claim` if it needs it; True when a patch was written. A patch refused because the claim changed
        meanwhile (or the list came from a lagging cache) is tried once more on the claim as stored now."""
        meta = claim.get("metadata") or {}
        node = node_of(claim, self.driver)
        if node is None or meta.get("deletionTimestamp") or (meta.get("labels") or {}).get(LABEL) == node:
            return False
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        try:
            self.kube.patch_resource_claim(str(meta.get("namespace")), str(meta.get("name")), label_patch(claim, node))
        except NotFoundError:
            return False
        except InvalidError as e:  # a failed `test`: the claim changed
            if retry:
                try:
                    fresh = self.kube.get_resource_claim(str(meta.get("namespace")), str(meta.get("name")))
                except ApiError:
                    return False
                return self.offer(fresh, retry=False)
            log.info("claim not labelled; waiting for its next version", extra={"claim": where, "error": str(e)})
            return False
        except (ApiError, ValueError) as e:  # the next event or relist tries again
            log.info("claim not labelled; waiting for its next version", extra={"claim": where, "error": str(e)})
            return False
        self.labelled += 1
        log.info("claim labelled with its binding node", extra={"claim": where, "node": node})
        return True

    def run(self, stop: threading.Event) -> None:
        """List and watch until `stop`; relist on 410, every `resync_seconds`, and (with backoff) after errors."""
        backoff = 1.0
        while not stop.is_set():
            try:
                items, version = self.kube.watchable_resource_claims()
                for claim in items:
                    self.offer(claim)
                deadline = time.monotonic() + self.resync_seconds
                while not stop.is_set() and time.monotonic() < deadline:
                    remaining = max(1, int(deadline - time.monotonic()))
                    for event in self.kube.watch_resource_claims(version, remaining):
                        obj = event["object"]
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self.offer(obj)
                        if stop.is_set():
                            return
                backoff = 1.0
            except ExpiredError:
                continue
            except (ApiError, CcGpuError) as e:
                log.warning("claim watch failed; relisting", extra={"error": str(e), "retry_seconds": backoff})
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
