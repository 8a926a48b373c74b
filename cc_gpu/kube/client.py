"""`KubeApi` over the official `kubernetes` Python client: the only production path to the API server.

The client is imported inside the constructor, never at module import, so commands and code paths that never talk
to a cluster (discovery, attestation, the simulated host) do not pay for it. Requests go through the client's typed
APIs (`ResourceV1Api`, `NodeV1Api`; core/v1 through the client's generic request path, see `_core`). Bodies are
wire-form dicts, checked against the client's own models before sending; replies are read with
`_preload_content=False` and decoded from JSON, so callers get the server's exact wire form rather than the client's
model objects.

Writes ask the server for strict field validation (`fieldValidation=Strict`): an unknown field is an error, not a
silently dropped value. Every failure is translated into `cc_gpu.kube.errors` with the original exception chained.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from cc_gpu.kube.api import APPLY_PATCH, JSON_PATCH, MERGE_PATCH, JsonObject
from cc_gpu.kube.errors import (
    AlreadyExistsError,
    ApiError,
    ApiUnavailableError,
    ConflictError,
    ExpiredError,
    FieldCause,
    ForbiddenError,
    InvalidError,
    KubeConfigError,
    NotFoundError,
)

T = TypeVar("T")
STRICT = "Strict"


class KubernetesApi:
    """The real `KubeApi`: a kubeconfig file when given, else the pod's in-cluster service account."""

    def __init__(self, kubeconfig: Path | None, *, request_timeout: float = 10.0, user_agent: str = "cc-gpu") -> None:
        import yaml  # noqa: PLC0415 (the client's own kubeconfig parser)
        from kubernetes import client, config  # noqa: PLC0415 (lazy: see the module docstring)

        configuration = client.Configuration()
        try:
            if kubeconfig is not None:
                config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (config.ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError) as e:
            where = str(kubeconfig) if kubeconfig is not None else "the in-cluster service account"
            raise KubeConfigError(f"cannot load Kubernetes client configuration from {where}: {_safe(e)}") from e
        self._api_client = client.ApiClient(configuration)
        self._api_client.user_agent = user_agent
        self._resource = client.ResourceV1Api(self._api_client)
        self._node = client.NodeV1Api(self._api_client)
        self._timeout = request_timeout
        self._models = client

    @property
    def host(self) -> str:
        """The API server's URL, for logs and diagnostics (never the credentials)."""
        return str(self._api_client.configuration.host)

    def close(self) -> None:
        """Release the client's connection pool."""
        self._api_client.close()  # type: ignore[no-untyped-call]

    # -- reads ---------------------------------------------------------------------------------------------------

    def get_resource_claim(self, namespace: str, name: str) -> JsonObject:
        _require(namespace, name)
        return self._json(lambda: self._resource.read_namespaced_resource_claim(name, namespace, **self._opts()))

    def get_pod(self, namespace: str, name: str) -> JsonObject:
        _require(namespace, name)
        return self._json(lambda: self._core("GET", _path("namespaces", namespace, "pods", name)))

    def get_runtime_class(self, name: str) -> JsonObject:
        _require(name)
        return self._json(lambda: self._node.read_runtime_class(name, **self._opts()))

    def get_node(self, name: str) -> JsonObject:
        _require(name)
        return self._json(lambda: self._core("GET", _path("nodes", name)))

    def get_device_class(self, name: str) -> JsonObject:
        _require(name)
        return self._json(lambda: self._resource.read_device_class(name, **self._opts()))

    def get_config_map(self, namespace: str, name: str) -> JsonObject:
        _require(namespace, name)
        return self._json(lambda: self._core("GET", _path("namespaces", namespace, "configmaps", name)))

    def list_resource_claims(self) -> list[JsonObject]:
        reply = self._json(lambda: self._resource.list_resource_claim_for_all_namespaces(**self._opts()))
        items = reply.get("items") or []
        if not isinstance(items, list):
            raise InvalidError("the ResourceClaim list reply has no item list", code=200)
        return items

    # -- ResourceSlices ------------------------------------------------------------------------------------------

    def list_resource_slices(self, driver: str, node_name: str) -> list[JsonObject]:
        selector = f"spec.driver={driver},spec.nodeName={node_name}"
        reply = self._json(lambda: self._resource.list_resource_slice(field_selector=selector, **self._opts()))
        items = reply.get("items") or []
        if not isinstance(items, list):
            raise InvalidError("the ResourceSlice list reply has no item list", code=200)
        return items

    def create_resource_slice(self, body: JsonObject) -> JsonObject:
        return self._json(
            lambda: self._resource.create_resource_slice(
                self._model("V1ResourceSlice", body), field_validation=STRICT, **self._opts()
            )
        )

    def update_resource_slice(self, body: JsonObject) -> JsonObject:
        name = _name_of(body)
        return self._json(
            lambda: self._resource.replace_resource_slice(
                name, self._model("V1ResourceSlice", body), field_validation=STRICT, **self._opts()
            )
        )

    def delete_resource_slice(self, name: str, *, uid: str, resource_version: str) -> None:
        _require(name)
        options = self._model("V1DeleteOptions", {"preconditions": {"uid": uid, "resourceVersion": resource_version}})
        self._call(lambda: self._resource.delete_resource_slice(name, body=options, **self._opts()))

    # -- ResourceClaim status ------------------------------------------------------------------------------------

    def update_resource_claim_status(self, namespace: str, name: str, body: JsonObject) -> JsonObject:
        _require(namespace, name)
        return self._json(
            lambda: self._resource.replace_namespaced_resource_claim_status(
                name, namespace, self._model("ResourceV1ResourceClaim", body), field_validation=STRICT, **self._opts()
            )
        )

    def apply_resource_claim_status(
        self, namespace: str, name: str, body: JsonObject, *, field_manager: str
    ) -> JsonObject:
        _require(namespace, name)
        return self._json(
            lambda: self._resource.patch_namespaced_resource_claim_status(
                name,
                namespace,
                body,
                field_manager=field_manager,
                force=True,
                field_validation=STRICT,
                _content_type=APPLY_PATCH,
                **self._opts(),
            )
        )

    def json_patch_resource_claim_status(self, namespace: str, name: str, operations: list[JsonObject]) -> JsonObject:
        _require(namespace, name)
        return self._json(
            lambda: self._resource.patch_namespaced_resource_claim_status(
                name, namespace, operations, field_validation=STRICT, _content_type=JSON_PATCH, **self._opts()
            )
        )

    def patch_resource_claim_status(self, namespace: str, name: str, patch: JsonObject) -> JsonObject:
        _require(namespace, name)
        return self._json(
            lambda: self._resource.patch_namespaced_resource_claim_status(
                name, namespace, patch, field_validation=STRICT, _content_type=MERGE_PATCH, **self._opts()
            )
        )

    # -- ResourceClaims of every namespace (the binding-condition watcher) ----------------------------------------

    def watchable_resource_claims(self, label_selector: str = "") -> tuple[list[JsonObject], str]:
        query = [("resourceVersionMatch", "NotOlderThan"), ("resourceVersion", "0")]
        if label_selector:
            query.append(("labelSelector", label_selector))
        reply = self._json(lambda: self._request("GET", _CLAIMS, query=query))
        items = reply.get("items") or []
        if not isinstance(items, list):
            raise InvalidError("the ResourceClaim list reply has no item list", code=200)
        return items, str((reply.get("metadata") or {}).get("resourceVersion", ""))

    def watch_resource_claims(self, resource_version: str, timeout_seconds: int,
                              label_selector: str = "") -> Iterator[JsonObject]:
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version),
                 ("timeoutSeconds", str(int(timeout_seconds)))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        timeout = (self._timeout if isinstance(self._timeout, (int, float)) else 30.0, timeout_seconds + 30.0)
        response = self._call(lambda: self._request("GET", _CLAIMS, query=query, timeout=timeout, stream=True))
        raw = response.response
        try:
            buffer = b""
            with _translated_errors():
                for chunk in raw.stream(65536, decode_content=True):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield _watch_event(line)
        finally:
            raw.release_conn()

    def patch_resource_claim(self, namespace: str, name: str, operations: list[JsonObject]) -> JsonObject:
        _require(namespace, name)
        return self._json(
            lambda: self._resource.patch_namespaced_resource_claim(
                name, namespace, operations, field_validation=STRICT, _content_type=JSON_PATCH, **self._opts()
            )
        )

    # -- Events and ConfigMaps -----------------------------------------------------------------------------------

    def create_event(self, namespace: str, body: JsonObject) -> JsonObject:
        _require(namespace)
        model = self._model("CoreV1Event", body)
        return self._json(lambda: self._core("POST", _path("namespaces", namespace, "events"), model))

    def create_config_map(self, namespace: str, body: JsonObject) -> JsonObject:
        _require(namespace)
        model = self._model("V1ConfigMap", body)
        return self._json(lambda: self._core("POST", _path("namespaces", namespace, "configmaps"), model, STRICT))

    def update_config_map(self, namespace: str, body: JsonObject) -> JsonObject:
        _require(namespace)
        name = _name_of(body)
        model = self._model("V1ConfigMap", body)
        path = _path("namespaces", namespace, "configmaps", name)
        return self._json(lambda: self._core("PUT", path, model, STRICT))

    # -- Pods (the pod-gate controller) --------------------------------------------------------------------------

    def list_pods(self, label_selector: str) -> list[JsonObject]:
        """Pods of every namespace that match `label_selector` (server-side)."""
        reply = self._json(lambda: self._core("GET", _path("pods"), query=[("labelSelector", label_selector)]))
        items = reply.get("items") or []
        if not isinstance(items, list):
            raise InvalidError("the Pod list reply has no item list", code=200)
        return items

    def patch_pod(self, namespace: str, name: str, operations: list[JsonObject]) -> JsonObject:
        """An RFC 6902 JSON patch of a pod; `test` operations make it conditional (InvalidError when one fails)."""
        _require(namespace, name)
        path = _path("namespaces", namespace, "pods", name)
        return self._json(lambda: self._core("PATCH", path, operations, STRICT, content_type=JSON_PATCH))

    # -- plumbing ------------------------------------------------------------------------------------------------

    def _model(self, kind: str, body: JsonObject) -> Any:
        """The client's model for a wire-form body; its strict checks fail like a server-side 422 would."""
        with _translated_errors():
            return getattr(self._models, kind).model_validate(body)  # strict: from_dict drops unknown keys

    def _core(self, method: str, path: str, body: Any = None, field_validation: str | None = None, *,
              query: list[tuple[str, str]] | None = None, content_type: str = "application/json") -> Any:
        """A core/v1 request through the client's own request machinery (configuration, auth, TLS, retries).

        Hand-built paths instead of `CoreV1Api` for a measured reason: that generated module alone costs about
        0.46 s and 22 MB to import here, more than the rest of the client together, for four simple calls.
        """
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415 (lazy: see the module docstring)

        query = [*(query or []), *([("fieldValidation", field_validation)] if field_validation else [])]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._api_client.call_api(*request, _request_timeout=self._timeout)
        response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response

    def _request(self, method: str, path: str, *, query: list[tuple[str, str]],
                 timeout: Any = None, stream: bool = False) -> Any:
        """A request for a named-group path through the client's request machinery; `stream`: body left unread."""
        from kubernetes.client.exceptions import ApiException  # noqa: PLC0415 (lazy: see the module docstring)

        request = self._api_client.param_serialize(
            method=method, resource_path=path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api_client.call_api(*request, _request_timeout=timeout or self._timeout)
        if not (stream and 200 <= response.status <= 299):
            response.read()  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response

    def _opts(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self._timeout}

    def _json(self, call: Callable[[], Any]) -> JsonObject:
        response = self._call(call)
        try:
            decoded = json.loads(response.data)
        except (ValueError, TypeError) as e:
            raise ApiUnavailableError(f"the API server sent a reply that is not JSON: {e}") from e
        if not isinstance(decoded, dict):
            raise ApiUnavailableError("the API server sent a JSON reply that is not an object")
        return decoded

    def _call(self, call: Callable[[], T]) -> T:
        with _translated_errors():
            return call()


_CLAIMS = "/apis/resource.k8s.io/v1/resourceclaims"


def _watch_event(line: bytes) -> JsonObject:
    """One watch event (`{"type", "object"}`); an ERROR event is raised as its typed error (410: ExpiredError)."""
    try:
        event = json.loads(line)
    except ValueError as e:
        raise ApiUnavailableError(f"the API server sent a watch event that is not JSON: {e}") from e
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ApiUnavailableError("the API server sent a watch event without an object")
    if event.get("type") == "ERROR":
        status = event["object"]
        raise error_from_status(int(status.get("code") or 0), json.dumps(status))
    return event


def _safe(error: Exception) -> str:
    """An error's message without quoting the file: a YAML error's snippet could show a token or a key."""
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        return f"{getattr(error, 'problem', 'syntax error')} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(error, OSError):
        return str(error.strerror or error)
    return f"{type(error).__name__}: {error}"


def _require(*names: str) -> None:
    """An empty name or namespace would turn a read of one object into a list of all of them: refuse it."""
    if not all(isinstance(n, str) and n for n in names):
        raise InvalidError(
            "a namespace or object name is empty",
            causes=(FieldCause("metadata.name", "FieldValueRequired", "Required value"),),
        )


def _path(*segments: str) -> str:
    """A core/v1 path; every segment is percent-encoded, so a name can never step into another path."""
    return "/api/v1/" + "/".join(quote(segment, safe="") for segment in segments)


def _name_of(body: JsonObject) -> str:
    name = (body.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        cause = FieldCause("metadata.name", "FieldValueRequired", "Required value")
        raise InvalidError("the object to replace has no metadata.name", causes=(cause,))
    return name


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn the client's, urllib3's and pydantic's exceptions into `cc_gpu.kube.errors`, chaining the original."""
    import pydantic  # noqa: PLC0415 (lazy, as the client itself)
    import urllib3  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        yield
    except ApiException as e:
        raise error_from_status(int(e.status or 0), e.body, e.headers) from e
    except pydantic.ValidationError as e:
        causes = tuple(_pydantic_cause(err) for err in e.errors())
        raise InvalidError(f"the client refused the request: {e}", reason="ClientValidation", causes=causes) from e
    except urllib3.exceptions.HTTPError as e:
        raise ApiUnavailableError(f"the API server could not be reached: {e}") from e
    except OSError as e:
        raise ApiUnavailableError(f"the API server could not be reached: {e}") from e


def _pydantic_cause(err: Any) -> FieldCause:
    field = ".".join(str(part) for part in err.get("loc", ())) or "body"
    return FieldCause(field, str(err.get("type", "")), str(err.get("msg", "")))


def error_from_status(code: int, body: object, headers: Any = None) -> ApiError:
    """The typed error for an HTTP error reply whose body is (usually) a Kubernetes `Status` object."""
    status = _decode_status(body)
    message = str(status.get("message") or f"HTTP {code}")
    reason = str(status.get("reason") or "")
    details = status.get("details") if isinstance(status.get("details"), dict) else {}
    causes = tuple(
        FieldCause(str(c.get("field", "")), str(c.get("reason", "")), str(c.get("message", "")))
        for c in (details or {}).get("causes") or []
        if isinstance(c, dict)
    )
    if code == 404:
        return NotFoundError(message, code=code, reason=reason or "NotFound")
    if code == 410:
        return ExpiredError(message, code=code, reason=reason or "Expired")
    if code == 409:
        if reason == "AlreadyExists":
            return AlreadyExistsError(message, code=code, reason=reason)
        return ConflictError(message, code=code, reason=reason or "Conflict")
    if code in (400, 422):
        return InvalidError(message, code=code, reason=reason, causes=causes)
    if code in (401, 403):
        return ForbiddenError(message, code=code, reason=reason)
    if code == 429 or code >= 500 or code == 0:
        return ApiUnavailableError(message, code=code, reason=reason, retry_after=_retry_after(headers))
    return ApiError(message, code=code, reason=reason, causes=causes)


def _decode_status(body: object) -> dict[str, Any]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return {}
    try:
        decoded = json.loads(body)
    except ValueError:
        return {"message": body[:500]}
    return decoded if isinstance(decoded, dict) else {}


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    try:
        value = headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError, AttributeError):
        return None
