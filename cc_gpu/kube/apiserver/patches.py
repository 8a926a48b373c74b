"""PATCH bodies as the real API server applies them: JSON merge patch, strategic merge patch, JSON patch.

- `application/merge-patch+json` (RFC 7386): maps merge recursively, `null` deletes a key, lists are replaced.
- `application/strategic-merge-patch+json`: like a merge patch, except that lists the Kubernetes types mark
  `patchStrategy: merge` are merged element by element on their merge key (`STRATEGIC_LIST_KEYS`), and the
  `$patch: replace` / `$patch: delete` directives on maps. Lists not in the table are replaced, as upstream does
  for lists without a patch strategy (for example a ResourceClaim's `status.devices`).
- `application/json-patch+json` (RFC 6902), applied by the `jsonpatch` library.

Server-side apply (`application/apply-patch+yaml`) is not modelled: it answers 415.
"""

from __future__ import annotations

import copy
from typing import Any

from cc_gpu.kube.apiserver.status import ApiStatus, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

STRATEGIC_LIST_KEYS: dict[str, str] = {
    "metadata.ownerReferences": "uid",
    "status.reservedFor": "uid",
    "status.conditions": "type",
    "spec.containers": "name",
    "spec.initContainers": "name",
    "spec.volumes": "name",
    "spec.taints": "key",
    "status.addresses": "type",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: str = "") -> Any:
    """A strategic merge patch restricted to the merge keys of `STRATEGIC_LIST_KEYS`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    body = {k: v for k, v in patch.items() if k != "$patch"}
    if directive == "replace":
        return copy.deepcopy(body)
    if directive is not None:
        raise bad_request(f"unknown patch type: {directive!r}")
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in body.items():
        child = f"{path}.{key}" if path else key
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and child in STRATEGIC_LIST_KEYS:
            result[key] = _merge_keyed_list(result.get(key), value, STRATEGIC_LIST_KEYS[child], child)
        else:
            merged = strategic_merge_patch(result.get(key), value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_keyed_list(target: Any, patch: list[Any], key: str, path: str) -> list[Any]:
    items = [copy.deepcopy(item) for item in target] if isinstance(target, list) else []
    for element in patch:
        if not isinstance(element, dict) or key not in element:
            raise bad_request(f"{path}: every element of a strategic merge patch list needs the merge key {key!r}")
        index = next(
            (i for i, item in enumerate(items) if isinstance(item, dict) and item.get(key) == element[key]), None
        )
        if element.get("$patch") == "delete":
            if index is not None:
                items.pop(index)
        elif index is None:
            items.append({k: v for k, v in element.items() if k != "$patch"})
        else:
            items[index] = strategic_merge_patch(items[index], element, path)
    return items


def check_patch_type(content_type: str) -> None:
    """415 for a patch media type the double does not apply (checked before the object is looked up, as upstream)."""
    if content_type.split(";", maxsplit=1)[0].strip().lower() not in (MERGE, STRATEGIC, JSON_PATCH):
        raise unsupported_media_type(content_type)


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The object after applying `patch` of the given media type; raises `ApiStatus` like the real server."""
    media = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media == JSON_PATCH:
        import jsonpatch  # noqa: PLC0415 (only PATCH requests of this type need it)

        if not isinstance(patch, list):
            raise bad_request("json patch must be a list of operations")
        try:
            result = jsonpatch.apply_patch(target, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
            raise ApiStatus(
                422, "Invalid", f"the server rejected our request due to an error in our request: {e}"
            ) from e
    elif media == MERGE:
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be a JSON object")
        result = merge_patch(target, patch)
    elif media == STRATEGIC:
        if not isinstance(patch, dict):
            raise bad_request("a strategic merge patch must be a JSON object")
        result = strategic_merge_patch(target, patch)
    else:
        raise unsupported_media_type(content_type)
    if not isinstance(result, dict):
        raise bad_request("the patch does not leave an object")
    return result
