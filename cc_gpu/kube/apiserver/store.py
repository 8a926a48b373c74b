"""The API-server double's object store: what etcd and the generic registry do for the real server.

One lock guards every object, so each request sees and produces a consistent state. The store stamps what the
server owns (`uid`, `creationTimestamp`, `resourceVersion` from one cluster-wide counter, `generation` bumped when
the spec changes, names from `generateName`), enforces optimistic concurrency (a stale `resourceVersion` or a failed
delete precondition is a 409 Conflict), keeps `status` apart from the main resource where the real server has a
status subresource, does not bump anything for an update that changes nothing, and keeps a bounded history of
changes from which watches are served.
"""

from __future__ import annotations

import copy
import json
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cc_gpu.kube.apiserver import rawbytes
from cc_gpu.kube.apiserver.defaults import prepare_for_write
from cc_gpu.kube.apiserver.resources import ResourceType
from cc_gpu.kube.apiserver.status import (
    STALE,
    ApiStatus,
    Cause,
    already_exists,
    bad_request,
    conflict,
    invalid,
    not_found,
)
from cc_gpu.kube.apiserver.validation import normalize_times, validate_object

JsonObject = dict[str, Any]
Clock = Callable[[], datetime]
Key = tuple[str, str, str]  # plural, namespace ("" when cluster-scoped), name

_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the real server's: no vowels, no look-alikes
HISTORY = 1024  # watch history, in changes; each keeps a copy of the object


@dataclass(frozen=True)
class WatchEvent:
    """One change, as a watch stream reports it."""

    resource_version: int
    type: str  # ADDED, MODIFIED, DELETED
    plural: str
    namespace: str
    object: JsonObject
    previous: JsonObject | None = None
    """The object before a MODIFIED change, so a filtered watch can tell entering and leaving its selector."""


def _now(clock: Clock) -> str:
    return clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_server_fields(obj: JsonObject) -> JsonObject:
    """The object without what the server changes on every write, for "did anything change?" comparisons."""
    cleaned = copy.deepcopy(obj)
    meta = cleaned.get("metadata", {})
    for field in ("resourceVersion", "generation", "managedFields"):
        meta.pop(field, None)
    return cleaned


def _stamp_type(rt: ResourceType, obj: JsonObject) -> None:
    """Fill in apiVersion and kind as the server's decoder does; a body for another type is a 400."""
    for field, expected in (("apiVersion", rt.api_version), ("kind", rt.kind)):
        given = obj.get(field)
        if given not in (None, "", expected):
            raise bad_request(f"the {field} of the object ({given}) does not match the request ({expected})")
        obj[field] = expected


def _compacted(text: str) -> str:
    """Stored bytes after a JSON or merge patch: whitespace gone, member order kept."""
    return json.dumps(json.loads(text), separators=(",", ":"))


def _same_values(old: tuple[str, ...], new: tuple[str, ...]) -> bool:
    return len(old) == len(new) and all(json.loads(a) == json.loads(b) for a, b in zip(old, new, strict=True))


def _uid_conflict(rt: ResourceType, name: str, wanted: str, current: JsonObject) -> ApiStatus:
    have = current["metadata"]["uid"]
    return conflict(rt, name, f"Precondition failed: UID in precondition: {wanted}, UID in object meta: {have}")


class Store:
    """Objects by resource, namespace and name, with the real server's write semantics."""

    def __init__(self, clock: Clock | None = None, *, history: int = HISTORY) -> None:
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._objects: dict[Key, JsonObject] = {}
        self._raw: dict[Key, tuple[str, ...]] = {}  # a claim's allocation parameters, as bytes (`rawbytes.py`)
        self._revision = 0
        self._history: deque[WatchEvent] = deque(maxlen=history)
        self._changed = threading.Condition(threading.RLock())
        self.closed = False

    @property
    def revision(self) -> int:
        with self._changed:
            return self._revision

    def now(self) -> str:
        """The server's clock as an RFC 3339 timestamp (whole seconds)."""
        return _now(self._clock)

    # -- reads ---------------------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> JsonObject:
        with self._changed:
            obj = self._objects.get((rt.plural, namespace, name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def list_matching(
        self, rt: ResourceType, namespace: str | None, match: Callable[[JsonObject], bool]
    ) -> tuple[list[JsonObject], int]:
        """Matching objects sorted by namespace and name, and the revision they were read at."""
        with self._changed:
            items = [
                copy.deepcopy(obj)
                for (plural, ns, _), obj in sorted(self._objects.items())
                if plural == rt.plural and (namespace is None or ns == namespace) and match(obj)
            ]
            return items, self._revision

    def namespace_exists(self, name: str) -> bool:
        with self._changed:
            return ("namespaces", "", name) in self._objects

    # -- writes --------------------------------------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, body: JsonObject, *, dry_run: bool = False) -> JsonObject:
        obj: JsonObject = normalize_times(copy.deepcopy(body))
        _stamp_type(rt, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        if rt.namespaced:
            meta["namespace"] = namespace
        with self._changed:
            if rt.namespaced and rt.plural != "namespaces" and not self.namespace_exists(namespace):
                raise ApiStatus(
                    404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
                )
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(rt, namespace, str(meta["generateName"]))
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now(self._clock)
            if rt.has_generation:
                meta["generation"] = 1
            if rt.kind == "Namespace":
                obj.setdefault("spec", {"finalizers": ["kubernetes"]})
                obj.setdefault("status", {"phase": "Active"})
            obj = prepare_for_write(rt, None, obj, _now(self._clock))
            validate_object(rt, None, obj)
            key = (rt.plural, namespace if rt.namespaced else "", str(meta["name"]))
            if key in self._objects:
                raise already_exists(rt, key[2])
            if dry_run:
                return obj
            return self._commit(rt, key, obj, "ADDED")

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: JsonObject,
        *,
        subresource: str = "",
        dry_run: bool = False,
        encoding: rawbytes.Encoding = rawbytes.CANONICAL,
    ) -> JsonObject:
        """PUT: the body replaces the object (or only its status, for the status subresource)."""

        def build(current: JsonObject) -> JsonObject:
            return body

        return self.update(rt, namespace, name, build, subresource=subresource, dry_run=dry_run, encoding=encoding)

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        build: Callable[[JsonObject], JsonObject],
        *,
        subresource: str = "",
        dry_run: bool = False,
        apply: bool = False,
        encoding: rawbytes.Encoding = rawbytes.CANONICAL,
    ) -> JsonObject:
        """Read-modify-write under the lock: `build` gets the current object and returns the requested one.

        Only an apply (`apply=True`) changes `metadata.managedFields`; other writes keep the stored ones.
        `encoding` says how the write serialises opaque parameters (`rawbytes.py`): a claim whose allocation would
        change bytes is refused, as the real server's byte comparison refuses it.
        """
        if subresource not in ("", "status") or (subresource == "status" and not rt.status_subresource):
            raise ApiStatus(
                404, "NotFound", f"the server could not find the requested resource ({rt.plural}/{subresource})"
            )
        with self._changed:
            key = (rt.plural, namespace if rt.namespaced else "", name)
            current = self._objects.get(key)
            if current is None:
                raise not_found(rt, name)
            requested = build(copy.deepcopy(current))
            if not isinstance(requested, dict) or not isinstance(requested.get("metadata", {}), dict):
                raise bad_request("the body must be an object with object metadata")
            requested = normalize_times(copy.deepcopy(requested))
            _stamp_type(rt, requested)
            meta = requested.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise bad_request(
                    f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
                )
            if rt.namespaced and meta.get("namespace", namespace) != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            version = str(meta.get("resourceVersion") or "")
            if version and version != current["metadata"]["resourceVersion"]:
                raise conflict(rt, name, STALE)
            if meta.get("uid") and meta["uid"] != current["metadata"]["uid"]:
                raise _uid_conflict(rt, name, meta["uid"], current)
            updated = prepare_for_write(
                rt, current, self._merge_for_write(rt, current, requested, subresource), _now(self._clock)
            )
            managed = (requested if apply else current)["metadata"].get("managedFields")
            if managed:
                updated["metadata"]["managedFields"] = managed
            else:
                updated["metadata"].pop("managedFields", None)
            raw = self._check_allocation_bytes(rt, key, current, updated, encoding)  # also for a no-op, as upstream
            if _strip_server_fields(updated) == _strip_server_fields(current):
                return copy.deepcopy(current)  # a no-op write changes nothing, not even the resourceVersion
            if rt.has_generation and updated.get("spec") != current.get("spec"):
                updated["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
            validate_object(rt, current, updated)
            if dry_run:
                return updated
            if raw is None:
                self._raw.pop(key, None)
            else:
                self._raw[key] = raw
            return self._commit(rt, key, updated, "MODIFIED")

    def delete(
        self, rt: ResourceType, namespace: str, name: str, preconditions: JsonObject | None = None
    ) -> JsonObject:
        with self._changed:
            key = (rt.plural, namespace if rt.namespaced else "", name)
            current = self._objects.get(key)
            if current is None:
                raise not_found(rt, name)
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != current["metadata"]["uid"]:
                raise _uid_conflict(rt, name, pre["uid"], current)
            if pre.get("resourceVersion") and pre["resourceVersion"] != current["metadata"]["resourceVersion"]:
                raise conflict(
                    rt,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                    f"ResourceVersion in object meta: {current['metadata']['resourceVersion']}",
                )
            del self._objects[key]
            self._revision += 1
            gone = copy.deepcopy(current)
            gone["metadata"]["resourceVersion"] = str(self._revision)
            self._record(rt, key, gone, "DELETED")
            return gone

    # -- watch ---------------------------------------------------------------------------------------------------

    def events_since(self, revision: int, timeout: float) -> tuple[list[WatchEvent], bool]:
        """Changes after `revision`, waiting up to `timeout` for one; False when history no longer reaches back."""
        with self._changed:
            if self._history and revision < self._history[0].resource_version - 1:
                return [], False
            if self._revision <= revision and not self.closed:
                self._changed.wait(timeout)
            return [e for e in self._history if e.resource_version > revision], True

    def close(self) -> None:
        """Wake every watcher so it can end its stream."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def _check_allocation_bytes(
        self, rt: ResourceType, key: Key, current: JsonObject, updated: JsonObject, encoding: rawbytes.Encoding
    ) -> tuple[str, ...] | None:
        """The bytes the write stores for the allocation's parameters; 422 where they change an existing allocation."""
        if rt.kind != "ResourceClaim":
            return None
        old = self._raw.get(key) or rawbytes.allocation_parameters(current, rawbytes.CANONICAL)
        if encoding is None:
            return old
        if isinstance(encoding, tuple):
            new = encoding if rawbytes.allocation_parameters(updated, rawbytes.COMPACT) is not None else None
        else:
            new = rawbytes.allocation_parameters(updated, encoding)
        if encoding == rawbytes.COMPACT and old is not None and new is not None:
            new = tuple(_compacted(text) for text in old) if _same_values(old, new) else new
        if old is not None and new is not None:
            if new != old:
                why = "Invalid value: null: field cannot be modified once set"
                raise invalid(rt, key[2], [Cause("status.allocation", "FieldValueInvalid", why)])
            return old
        return new

    # -- internals -----------------------------------------------------------------------------------------------

    def _merge_for_write(
        self, rt: ResourceType, current: JsonObject, requested: JsonObject, subresource: str
    ) -> JsonObject:
        if subresource == "status":
            updated = copy.deepcopy(current)
            if "status" in requested:
                updated["status"] = copy.deepcopy(requested["status"])
            else:
                updated.pop("status", None)
            return updated
        updated = copy.deepcopy(requested)
        _stamp_type(rt, updated)
        meta = updated["metadata"]
        for field in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
        if rt.namespaced:
            meta["namespace"] = current["metadata"]["namespace"]
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if rt.status_subresource:
            if "status" in current:
                updated["status"] = copy.deepcopy(current["status"])
            else:
                updated.pop("status", None)
        return updated

    def _commit(self, rt: ResourceType, key: Key, obj: JsonObject, event: str) -> JsonObject:
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        previous = self._objects.get(key)
        self._objects[key] = obj
        self._record(rt, key, obj, event, previous)
        return copy.deepcopy(obj)

    def _record(
        self, rt: ResourceType, key: Key, obj: JsonObject, event: str, previous: JsonObject | None = None
    ) -> None:
        change = WatchEvent(self._revision, event, rt.plural, key[1], copy.deepcopy(obj), previous)
        self._history.append(change)
        self._changed.notify_all()

    def _generate_name(self, rt: ResourceType, namespace: str, prefix: str) -> str:
        for _ in range(16):
            name = prefix + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
            if (rt.plural, namespace if rt.namespaced else "", name) not in self._objects:
                return name
        raise ApiStatus(409, "AlreadyExists", f"could not generate a unique name from {prefix!r}")
