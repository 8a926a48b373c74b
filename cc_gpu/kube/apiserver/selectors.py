"""Label and field selectors, parsed and matched the way the real API server does.

`labelSelector` supports the full grammar (`k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
`k>n`, `k<n`); `fieldSelector` supports `=`, `==` and `!=` on `metadata.name`, `metadata.namespace` and the
labels the resource declares, and refuses any other field with the server's own 400 message. Parsing is pure and
raises `ApiStatus` so the handler can answer with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from cc_gpu.kube.apiserver.resources import ResourceType, get_path
from cc_gpu.kube.apiserver.status import ApiStatus, bad_request

Predicate = Callable[[dict[str, object]], bool]

_LABEL_KEY = r"(?:[a-z0-9A-Z.\-]+/)?[a-z0-9A-Z](?:[a-z0-9A-Z_.\-]*[a-z0-9A-Z])?"
_LABEL_VALUE = r"(?:[a-z0-9A-Z](?:[a-z0-9A-Z_.\-]*[a-z0-9A-Z])?)?"
_SET_RE = re.compile(rf"^\s*({_LABEL_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*({_LABEL_KEY})\s*(==|!=|=|>|<)\s*({_LABEL_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_LABEL_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_LABEL_VALUE}$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # exists, !exists, in, notin, gt, lt
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        try:
            number, bound = int(value), int(next(iter(self.values)))
        except ValueError:
            return False
        return present and (number > bound if self.op == "gt" else number < bound)


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (part.strip() for part in parts) if p]


def _bad_label_selector(text: str, why: str) -> ApiStatus:
    return bad_request(f'unable to parse requirement: {why} (selector "{text}")')


def parse_label_selector(text: str) -> Predicate:
    """A predicate over objects for a `labelSelector` query parameter (empty selects everything)."""
    requirements: list[_Requirement] = []
    for part in _split_top_level(text):
        if m := _SET_RE.match(part):
            values = [v.strip() for v in m.group(3).split(",")]
            if any(not _VALUE_RE.match(v) for v in values):
                raise _bad_label_selector(text, f"invalid label value in {part!r}")
            requirements.append(_Requirement(m.group(1), m.group(2), frozenset(values)))
        elif m := _CMP_RE.match(part):
            key, op, value = m.group(1), m.group(2), m.group(3)
            if op in (">", "<"):
                if not value.lstrip("-").isdigit():
                    raise _bad_label_selector(text, f"{part!r} needs an integer")
                requirements.append(_Requirement(key, "gt" if op == ">" else "lt", frozenset([value])))
            else:
                requirements.append(_Requirement(key, "notin" if op == "!=" else "in", frozenset([value])))
        elif m := _EXISTS_RE.match(part):
            requirements.append(_Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise _bad_label_selector(text, f"cannot parse {part!r}")

    def predicate(obj: dict[str, object]) -> bool:
        labels = get_path(obj, "metadata.labels")
        label_map = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        return all(r.matches(label_map) for r in requirements)

    return predicate


def _field_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_field_selector(text: str, rt: ResourceType) -> Predicate:
    """A predicate over objects for a `fieldSelector` query parameter (empty selects everything)."""
    supported = {"metadata.name", "metadata.namespace", *rt.field_labels}
    terms: list[tuple[str, bool, str]] = []
    for part in re.split(r"(?<!\\),", text):
        if not part.strip():
            continue
        m = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.group(1), m.group(2), _unescape(m.group(3))
        if field not in supported:
            raise bad_request(f"field label not supported: {field}")
        terms.append((field, op != "!=", value))

    def predicate(obj: dict[str, object]) -> bool:
        return all((_field_text(get_path(obj, field)) == value) == equal for field, equal, value in terms)

    return predicate
