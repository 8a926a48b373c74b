"""HTTP routing of the API-server double: REST paths and verbs in, `Store` calls out, JSON (or `Status`) back.

Paths follow the real server: `/api/v1/...` for the core group, `/apis/<group>/<version>/...` otherwise,
`namespaces/<ns>/<plural>[/<name>[/status]]` for namespaced resources and `<plural>[/<name>]` for cluster-scoped ones
(and for listing a namespaced resource across all namespaces). GET lists or reads (`watch=true` streams changes as
newline-delimited watch events over chunked encoding), POST creates, PUT replaces, PATCH patches, DELETE deletes
with preconditions. Every request is recorded in the audit log the tests and benchmarks read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from cc_gpu.kube.apiserver import rawbytes
from cc_gpu.kube.apiserver.apply import apply_claim_status, check_options, is_apply, not_modelled
from cc_gpu.kube.apiserver.patches import apply_patch, check_patch_type
from cc_gpu.kube.apiserver.resources import RESOURCE_TYPES, ResourceType, lookup
from cc_gpu.kube.apiserver.selectors import Predicate, parse_field_selector, parse_label_selector
from cc_gpu.kube.apiserver.status import (
    ApiStatus,
    Cause,
    bad_request,
    method_not_allowed,
    path_not_found,
    success_status,
    unsupported_media_type,
)
from cc_gpu.kube.apiserver.store import WatchEvent

if TYPE_CHECKING:
    from cc_gpu.kube.apiserver.server import ApiServerDouble

JsonObject = dict[str, Any]
MAX_BODY = 3 * 1024 * 1024  # the real server's default request size limit
DEFAULT_WATCH_SECONDS = 1800


@dataclass(frozen=True)
class Route:
    """Where a request points: a resource type, and optionally a namespace, an object and a subresource."""

    rt: ResourceType
    namespace: str | None
    name: str
    subresource: str


def parse_route(path: str) -> Route:
    """The route of a REST path, or a 404 `ApiStatus` for a path the double does not serve."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise path_not_found(path)
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or not all(rest):
        raise path_not_found(path)
    rt = lookup(group, version, rest[0])
    if rt is None or (namespace is not None and not rt.namespaced):
        raise path_not_found(path)
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if rt.namespaced and name and namespace is None:
        raise path_not_found(path)
    return Route(rt, namespace, name, subresource)


def _discovery(path: str) -> JsonObject | None:
    if path in ("/healthz", "/livez", "/readyz"):
        return {"status": "ok"}
    if path == "/version":
        return {"major": "1", "minor": "37", "gitVersion": "v1.37.0-cc-gpu-double", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = sorted({(rt.group, rt.version) for rt in RESOURCE_TYPES if rt.group})
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                    "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                }
                for g, v in groups
            ],
        }
    parts = path.strip("/").split("/")
    if parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis"):
        group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
        served = [rt for rt in RESOURCE_TYPES if (rt.group, rt.version) == (group, version)]
        if not served:
            return None
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources: list[JsonObject] = []
        for rt in served:
            resources.append(
                {
                    "name": rt.plural,
                    "singularName": rt.kind.lower(),
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": verbs,
                }
            )
            if rt.status_subresource:
                resources.append(
                    {
                        "name": f"{rt.plural}/status",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": rt.api_version, "resources": resources}
    return None


class Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection to the double (keep-alive, so the client's connection pool is reused)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this each reply waits ~40 ms
    double: ApiServerDouble  # set on the subclass the server creates

    def log_message(self, format: str, *args: Any) -> None:  # the audit log replaces access logs
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- dispatch ------------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        verb, route = method.lower(), None
        started = time.monotonic()
        try:
            raw = self._read_body()
            discovery = _discovery(url.path) if method == "GET" else None
            if discovery is not None:
                self._send(200, discovery)
                return
            route = parse_route(url.path)
            verb = _verb(method, route, query)
            if verb == "watch":
                watch = self._prepare_watch(route, query)
                self.double.record(
                    method, verb, route, 200, user_agent=self.headers.get("User-Agent", ""), started=started
                )
                self._watch(route, *watch)
                return
            code, reply = self._serve(verb, route, query, raw)
        except ApiStatus as e:
            code, reply = e.code, e.to_status()
        except Exception as e:  # a bug in the double: answer like the real server's 500, keep serving
            code, reply = 500, ApiStatus(500, "InternalError", f"Internal error occurred: {e!r}").to_status()
        if route is not None:  # recorded before replying, so a client that saw the reply also sees the entry
            self.double.record(
                method, verb, route, code, user_agent=self.headers.get("User-Agent", ""), started=started
            )
        self._send(code, reply)

    def _serve(self, verb: str, route: Route, query: dict[str, str], raw: bytes) -> tuple[int, JsonObject]:
        store, rt, ns = self.double.store, route.rt, route.namespace or ""
        dry_run = _dry_run(query)
        if verb == "get":
            return 200, store.get(rt, ns, route.name)
        if verb == "list":
            label = parse_label_selector(query.get("labelSelector", ""))
            field = parse_field_selector(query.get("fieldSelector", ""), rt)
            items, revision = store.list_matching(rt, route.namespace, lambda o: label(o) and field(o))
            for item in items:
                item.pop("apiVersion", None)
                item.pop("kind", None)
            return 200, {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(revision)},
                "items": items,
            }
        if verb == "create":
            self._require_json()
            return 201, store.create(rt, ns, _decode_object(raw), dry_run=dry_run)
        if verb == "update":
            self._require_json()
            body = _decode_object(raw)
            encoding = rawbytes.sent_allocation_parameters(raw, body) if route.subresource == "status" else None
            return 200, store.replace(
                rt, ns, route.name, body, subresource=route.subresource, dry_run=dry_run, encoding=encoding
            )
        if verb == "patch":
            content_type = self.headers.get("Content-Type", "")
            subresource = route.subresource
            if is_apply(content_type):
                return 200, self._apply(route, query, raw, dry_run)
            if "force" in query:
                why = "Forbidden: may not be specified for non-apply patch"
                details = {"group": "meta.k8s.io", "kind": "PatchOptions"}
                cause = Cause("force", "FieldValueForbidden", why)
                raise ApiStatus(
                    422, "Invalid", f'PatchOptions.meta.k8s.io "" is invalid: force: {why}', details, (cause,)
                )
            check_patch_type(content_type)
            patch = _decode(raw)

            def build(current: JsonObject) -> JsonObject:
                patched = apply_patch(content_type, current, patch)
                if subresource == "status":
                    patched["metadata"] = {**current["metadata"], **_precondition(patched, current)}
                return patched

            media = content_type.split(";", maxsplit=1)[0].strip().lower()
            encoding = rawbytes.CANONICAL if media == "application/strategic-merge-patch+json" else rawbytes.COMPACT
            return 200, store.update(
                rt, ns, route.name, build, subresource=subresource, dry_run=dry_run, encoding=encoding
            )
        if verb == "delete":
            options = _decode_object(raw) if raw.strip() else {}
            preconditions = options.get("preconditions") or {}
            if not isinstance(preconditions, dict):
                raise bad_request("preconditions must be an object")
            gone = store.get(rt, ns, route.name) if dry_run else store.delete(rt, ns, route.name, preconditions)
            if rt.returns_deleted:
                return 200, gone
            if rt.kind == "Namespace":  # the real server answers with the namespace it starts to finalize
                gone.setdefault("metadata", {})["deletionTimestamp"] = store.now()
                gone["status"] = {"phase": "Terminating"}
                return 200, gone
            return 200, success_status(rt, route.name, gone["metadata"]["uid"])
        if verb == "deletecollection":
            label = parse_label_selector(query.get("labelSelector", ""))
            field = parse_field_selector(query.get("fieldSelector", ""), rt)
            items, _ = store.list_matching(rt, route.namespace, lambda o: label(o) and field(o))
            deleted = []
            for item in items:
                if dry_run:
                    deleted.append(item)
                    continue
                try:
                    deleted.append(store.delete(rt, item["metadata"].get("namespace", ""), item["metadata"]["name"]))
                except ApiStatus as e:
                    if e.code != 404:  # deleted meanwhile by someone else: as upstream, not an error
                        raise
            return 200, {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": {}, "items": deleted}
        raise method_not_allowed(verb, self.path)

    def _apply(self, route: Route, query: dict[str, str], raw: bytes, dry_run: bool) -> JsonObject:
        """Server-side apply, for the one subresource the double models it for (see `apply.py`)."""
        if route.rt.plural != "resourceclaims" or route.subresource != "status":
            raise not_modelled(f"{route.rt.plural}{'/' + route.subresource if route.subresource else ''}")
        manager, force = query.get("fieldManager", ""), query.get("force", "")
        check_options(manager, force)
        config = _decode_apply(raw)
        store, rt = self.double.store, route.rt

        def build(current: JsonObject) -> JsonObject:
            return apply_claim_status(rt, current, config, manager, force == "true", store.now())

        return store.update(
            rt,
            route.namespace or "",
            route.name,
            build,
            subresource="status",
            dry_run=dry_run,
            apply=True,
            encoding=rawbytes.CANONICAL,
        )

    def _prepare_watch(self, route: Route, query: dict[str, str]) -> tuple[Predicate, float, str]:
        """Everything a watch request can get wrong, checked before the 200 and the stream start."""
        label = parse_label_selector(query.get("labelSelector", ""))
        field = parse_field_selector(query.get("fieldSelector", ""), route.rt)
        try:
            seconds = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        except ValueError as e:
            raise bad_request(f"timeoutSeconds: invalid value {query.get('timeoutSeconds')!r}") from e
        since = query.get("resourceVersion", "")
        if since and not since.isdigit():
            raise bad_request(f"resourceVersion: invalid value {since!r}")
        return (lambda o: label(o) and field(o)), seconds, since

    def _watch(self, route: Route, match: Predicate, seconds: float, since: str) -> None:
        store, rt = self.double.store, route.rt
        deadline = time.monotonic() + seconds
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if since in ("", "0"):
                items, revision = store.list_matching(rt, route.namespace, match)
                for item in items:
                    self._chunk({"type": "ADDED", "object": item})
            else:
                revision = int(since)
            while not store.closed and time.monotonic() < deadline:
                events, reachable = store.events_since(revision, min(1.0, max(0.0, deadline - time.monotonic())))
                if not reachable:
                    expired = ApiStatus(410, "Expired", f"too old resource version: {revision} ({store.revision})")
                    self._chunk({"type": "ERROR", "object": expired.to_status()})
                    break
                for event in events:
                    revision = event.resource_version
                    if event.plural != rt.plural or (
                        route.namespace is not None and event.namespace != route.namespace
                    ):
                        continue
                    kind = _filtered_event_type(event, match)
                    if kind is not None:
                        self._chunk({"type": kind, "object": event.object})
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _chunk(self, event: JsonObject) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True  # the unread body would otherwise be parsed as the next request
            raise ApiStatus(413, "RequestEntityTooLarge", "the request body is too large")
        return self.rfile.read(length) if length else b""

    def _require_json(self) -> None:
        content_type = self.headers.get("Content-Type", "")
        media = content_type.split(";")[0].strip().lower()
        if media not in ("", "application/json", "*/*"):
            raise unsupported_media_type(content_type)

    def _send(self, code: int, payload: JsonObject) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _filtered_event_type(event: WatchEvent, match: Predicate) -> str | None:
    """The event a selector-filtered watch sends: an object entering the selection is ADDED, one leaving it DELETED."""
    now = match(event.object)
    if event.type != "MODIFIED" or event.previous is None:
        return event.type if now else None
    before = match(event.previous)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    return "DELETED" if before else None


def _verb(method: str, route: Route, query: dict[str, str]) -> str:
    if method == "GET":
        if route.name:
            return "get"
        return "watch" if query.get("watch") in ("true", "1") else "list"
    if method == "POST" and not route.name:
        if route.namespace is None and route.rt.namespaced:
            raise method_not_allowed(method, f"/{route.rt.plural}")
        return "create"
    if method == "DELETE" and not route.name:
        return "deletecollection"
    verbs = {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    if method in verbs and route.name:
        return verbs[method]
    raise method_not_allowed(method, route.rt.plural)


def _dry_run(query: dict[str, str]) -> bool:
    value = query.get("dryRun", "")
    if value not in ("", "All"):
        raise bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return value == "All"


def _precondition(patched: JsonObject, current: JsonObject) -> JsonObject:
    """A status patch may carry only a resourceVersion (a precondition) in its metadata."""
    version = (patched.get("metadata") or {}).get("resourceVersion")
    return {"resourceVersion": version} if version else {"resourceVersion": current["metadata"]["resourceVersion"]}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        raise bad_request(f"couldn't get version/kind; json parse error: {e}") from e


def _decode_apply(raw: bytes) -> Any:
    """An apply body is YAML (JSON is YAML); the real server decodes it strictly (duplicate keys are an error)."""
    import yaml  # noqa: PLC0415 (only apply requests need it)

    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise bad_request(f"error decoding YAML: {e}") from e


def _decode_object(raw: bytes) -> JsonObject:
    body = _decode(raw)
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body
