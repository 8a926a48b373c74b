"""Evaluates the chart's admission policies with a CEL interpreter (cel-python), the way the API server would.

Covers what the policies use: matchConditions, variables (evaluated in order, visible as `variables.<name>`),
validations, and ApplyConfiguration mutations. Typed object construction (`Object{...}`, `Object.metadata{...}`) is
Kubernetes-specific; here it builds plain maps, and `apply` merges them the way server-side apply merges a
granular map such as metadata.annotations (keys set, others kept).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

_ENV = celpy.Environment()


class _ObjectType(celtypes.MapType):
    """`Object` and its nested type names: calling builds a map, selecting a field names a nested type."""

    def __call__(self, fields: Any = None, *args: Any, **kwargs: Any) -> celtypes.MapType:
        return celtypes.MapType(fields or {})

    def get(self, key: Any, default: Any = None) -> _ObjectType:
        return _ObjectType()

    def __getitem__(self, key: Any) -> _ObjectType:
        return _ObjectType()

    def __contains__(self, key: object) -> bool:
        return True


def evaluate(expression: str, activation: Mapping[str, Any]) -> Any:
    program = _ENV.program(_ENV.compile(expression))
    result = program.evaluate(dict(activation))
    if isinstance(result, celpy.CELEvalError):
        raise AssertionError(f"CEL error in {expression!r}: {result}")
    return result


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.IntType):
        return int(value)
    return value


@dataclass(frozen=True)
class Review:
    """What admission sees: the request (operation, uid, userInfo, namespace), object and oldObject."""

    operation: str
    obj: Mapping[str, Any] | None
    old: Mapping[str, Any] | None = None
    uid: str = "7d1c4c2a-8f61-4a6e-9d0b-5c2e3f4a5b6c"
    user: Mapping[str, Any] | None = None
    namespace: str = "tenant-a"
    namespace_labels: Mapping[str, str] | None = None  # None: the namespace has no labels

    def _namespace_object(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.namespace}
        if self.namespace_labels is not None:
            meta["labels"] = dict(self.namespace_labels)
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}

    def activation(self) -> dict[str, Any]:
        request = {"operation": self.operation, "uid": self.uid, "namespace": self.namespace,
                   "userInfo": dict(self.user or {"username": "someone"})}
        return {"request": celpy.json_to_cel(request), "object": celpy.json_to_cel(self.obj),
                "oldObject": celpy.json_to_cel(self.old),
                "namespaceObject": celpy.json_to_cel(self._namespace_object())}


@dataclass(frozen=True)
class Policy:
    """One rendered ValidatingAdmissionPolicy or MutatingAdmissionPolicy."""

    spec: Mapping[str, Any]

    def _activation(self, review: Review) -> dict[str, Any]:
        activation = review.activation()
        variables: dict[str, Any] = {}
        for variable in self.spec.get("variables", []):
            activation["variables"] = celtypes.MapType(variables)
            variables[celtypes.StringType(variable["name"])] = evaluate(variable["expression"], activation)
        activation["variables"] = celtypes.MapType(variables)
        activation["Object"] = _ObjectType()
        return activation

    def matches(self, review: Review) -> bool:
        activation = review.activation()
        return all(bool(evaluate(c["expression"], activation)) for c in self.spec.get("matchConditions", []))

    def denials(self, review: Review) -> list[str]:
        """The messages of the validations that fail (empty: admitted)."""
        if not self.matches(review):
            return []
        activation = self._activation(review)
        failed = []
        for validation in self.spec["validations"]:
            if not bool(evaluate(validation["expression"], activation)):
                if "messageExpression" in validation:
                    failed.append(str(evaluate(validation["messageExpression"], activation)))
                else:
                    failed.append(validation["message"])
        return failed

    def mutate(self, review: Review) -> dict[str, Any]:
        """The object after the policy's apply-configuration mutations (unchanged when it does not match)."""
        result = copy.deepcopy(dict(review.obj or {}))
        if not self.matches(review):
            return result
        activation = self._activation(review)
        for mutation in self.spec["mutations"]:
            assert mutation["patchType"] == "ApplyConfiguration"
            _merge(result, _plain(evaluate(mutation["applyConfiguration"]["expression"], activation)))
        return result


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
