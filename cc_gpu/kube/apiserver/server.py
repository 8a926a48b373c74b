"""`ApiServerDouble`: a real HTTP+JSON server that answers like kube-apiserver for the resources the driver uses.

It runs on a thread (`start()`/`stop()`, or as a context manager) on a loopback port, so the official client, kubectl
and plain HTTP all talk to it over a real socket, and writes a kubeconfig pointing at itself. Tests play the
scheduler and the cluster through it (create Nodes, Pods, RuntimeClasses, DeviceClasses, ResourceClaims, then set
a claim's allocation through the status subresource) and read its audit log: every request with its verb,
resource and HTTP code, so a benchmark can assert that a steady-state plugin writes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cc_gpu.kube.apiserver.handler import Handler, Route
from cc_gpu.kube.apiserver.resources import RESOURCE_TYPES, ResourceType, by_kind, get_path
from cc_gpu.kube.apiserver.status import bad_request
from cc_gpu.kube.apiserver.store import HISTORY, Clock, Store

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class AuditEntry:
    """One request the double answered."""

    method: str
    verb: str  # get, list, watch, create, update, patch, delete
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    user_agent: str
    seconds: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops SYNs when a client opens many connections at once


class ApiServerDouble:
    """The API-server double. `port=0` picks a free port; `url` tells which."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
        namespaces: Sequence[str] = DEFAULT_NAMESPACES,
        watch_history: int = HISTORY,
    ) -> None:
        self.store = Store(clock, history=watch_history)
        self._address = (host, port)
        self._audit: list[AuditEntry] = []
        self._audit_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for namespace in namespaces:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> ApiServerDouble:
        """Listen and serve on a background thread; returns self."""
        handler = type("BoundHandler", (Handler,), {"double": self})
        self.store.closed = False
        self._httpd = _Server(self._address, handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="apiserver-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and end every watch stream."""
        self.store.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> ApiServerDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the API-server double is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def write_kubeconfig(self, path: Path, *, context: str = "cc-gpu-sim") -> Path:
        """A kubeconfig pointing at this server (plain HTTP, no credentials: the double does not authenticate)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": context, "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
            "current-context": context,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML: every kubeconfig loader reads it
        return path

    # -- direct access for tests ---------------------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object without HTTP (same validation and stamping; not audited), e.g. to seed a cluster."""
        rt = by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if rt is None:
            raise bad_request(f"the double does not serve {obj.get('apiVersion')}/{obj.get('kind')}")
        namespace = str(get_path(obj, "metadata.namespace") or ("default" if rt.namespaced else ""))
        return self.store.create(rt, namespace, obj)

    def store_type(self, plural: str, group: str | None = None) -> ResourceType:
        """The served resource type called `plural` (the first match when no group is given)."""
        for rt in RESOURCE_TYPES:
            if rt.plural == plural and (group is None or rt.group == group):
                return rt
        raise KeyError(plural)

    # -- audit ---------------------------------------------------------------------------------------------------

    def record(self, method: str, verb: str, route: Route, code: int, *, user_agent: str, started: float) -> None:
        entry = AuditEntry(
            method,
            verb,
            route.rt.group,
            route.rt.plural,
            route.subresource,
            route.namespace or "",
            route.name,
            code,
            user_agent,
            time.monotonic() - started,
        )
        with self._audit_lock:
            self._audit.append(entry)

    @property
    def audit(self) -> list[AuditEntry]:
        with self._audit_lock:
            return list(self._audit)

    def reset_audit(self) -> None:
        with self._audit_lock:
            self._audit.clear()

    def writes(self, verb: str | None = None, resource: str | None = None, *, succeeded: bool | None = None) -> int:
        """How many write requests (create, update, patch, delete) were made, optionally by verb and resource."""
        return sum(
            1
            for e in self.audit
            if e.verb in WRITE_VERBS
            and (verb is None or e.verb == verb)
            and (resource is None or e.resource == resource)
            and (succeeded is None or (200 <= e.code < 300) == succeeded)
        )
