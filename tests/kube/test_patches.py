"""The patch functions on their own: RFC 7386's own examples, and the strategic-merge rules the double applies."""

from __future__ import annotations

from typing import Any

import pytest

from cc_gpu.kube.apiserver.patches import apply_patch, merge_patch, strategic_merge_patch
from cc_gpu.kube.apiserver.status import ApiStatus

# RFC 7386, Appendix A: (original, patch, result).
RFC7386_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7386_EXAMPLES, ids=[f"A{i + 1}" for i in range(15)])
def test_merge_patch_matches_rfc7386(original: Any, patch: Any, result: Any) -> None:
    assert merge_patch(original, patch) == result


@pytest.mark.parametrize(
    ("original", "patch", "result"),
    [
        pytest.param(
            {"status": {"reservedFor": [{"uid": "1", "name": "a"}]}},
            {"status": {"reservedFor": [{"uid": "2", "name": "b"}]}},
            {"status": {"reservedFor": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]}},
            id="keyed-list-appends",
        ),
        pytest.param(
            {"status": {"reservedFor": [{"uid": "1", "name": "a"}]}},
            {"status": {"reservedFor": [{"uid": "1", "name": "renamed"}]}},
            {"status": {"reservedFor": [{"uid": "1", "name": "renamed"}]}},
            id="keyed-list-merges-element",
        ),
        pytest.param(
            {"status": {"reservedFor": [{"uid": "1"}, {"uid": "2"}]}},
            {"status": {"reservedFor": [{"uid": "1", "$patch": "delete"}]}},
            {"status": {"reservedFor": [{"uid": "2"}]}},
            id="keyed-list-delete-directive",
        ),
        pytest.param(
            {"status": {"devices": [{"device": "a"}]}},
            {"status": {"devices": [{"device": "b"}]}},
            {"status": {"devices": [{"device": "b"}]}},
            id="unkeyed-list-replaced",
        ),
        pytest.param(
            {"spec": {"a": 1, "b": 2}},
            {"spec": {"$patch": "replace", "c": 3}},
            {"spec": {"c": 3}},
            id="replace-directive",
        ),
        pytest.param({"spec": {"a": 1}, "x": 1}, {"spec": {"$patch": "delete"}}, {"x": 1}, id="delete-directive"),
    ],
)
def test_strategic_merge_patch(original: Any, patch: Any, result: Any) -> None:
    assert strategic_merge_patch(original, patch) == result


@pytest.mark.parametrize(
    ("content_type", "patch", "code"),
    [
        pytest.param("application/merge-patch+json", [1], 400, id="merge-patch-not-object"),
        pytest.param(
            "application/strategic-merge-patch+json",
            {"status": {"reservedFor": [{"name": "x"}]}},
            400,
            id="strategic-element-without-key",
        ),
        pytest.param("application/strategic-merge-patch+json", {"$patch": "frobnicate"}, 400, id="unknown-directive"),
        pytest.param("application/json-patch+json", {"op": "add"}, 400, id="json-patch-not-list"),
        pytest.param("application/json-patch+json", [{"op": "remove", "path": "/nope"}], 422, id="json-patch-fails"),
        pytest.param(
            "application/json-patch+json",
            [{"op": "replace", "path": "", "value": 1}],
            400,
            id="json-patch-leaves-no-object",
        ),
        pytest.param("text/plain", {}, 415, id="unknown-media-type"),
    ],
)
def test_bad_patches(content_type: str, patch: Any, code: int) -> None:
    with pytest.raises(ApiStatus) as caught:
        apply_patch(content_type, {"metadata": {"name": "x"}, "status": {}}, patch)
    assert caught.value.code == code
