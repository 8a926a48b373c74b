"""The bytes of opaque parameters, which the real server keeps as sent and compares byte for byte.

`RawExtension` values (`opaque.parameters`) are stored as the bytes their author sent; `api/equality` has no rule for
them, so the immutability check of a claim's `status.allocation` compares bytes. What bytes a write produces depends
on how it reaches the server:

- a PUT or POST carries the client's own serialisation (`spaced` for Python's `json.dumps` defaults, `compact`
  otherwise), key order included;
- a JSON merge patch or JSON patch is applied to the stored JSON, compacted, keys in their stored order (`compact`);
- a strategic-merge patch or server-side apply goes through a map and comes out compact with sorted keys
  (`canonical`), as does whatever the double writes for tests that play the scheduler (the scheduler copies the
  class's bytes; classes created with kubectl or Helm are canonical).

Measured against kube-apiserver 1.37 (`tests/cluster/test_plugin_real.py`, `tests/cluster/test_differential.py`):
canonical bytes accept every status write that leaves the allocation alone; keys out of order refuse apply and
strategic-merge patches but accept merge and JSON patches; whitespace refuses every write except a PUT with the same
bytes, which no JSON client can know (replies are compacted).
"""

from __future__ import annotations

import json
import re
from typing import Any

CANONICAL = "canonical"
COMPACT = "compact"
SPACED = "spaced"


Encoding = str | tuple[str, ...] | None
"""How a write stores the allocation's parameters: a style above, the exact bytes a PUT carried, or None (kept)."""

_PARAMETERS = re.compile(r'"parameters"\s*:\s*')
ALLOCATION_CONFIG = ("status", "allocation", "devices", "config")


def _key_paths(value: Any, key: str, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every member named `key`, in document order (a parsed object keeps its members' order)."""
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for name, child in value.items():
            if name == key:
                out.append((*path, name))
            out += _key_paths(child, key, (*path, name))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _key_paths(child, key, (*path, i))
    return out


def sent_allocation_parameters(raw: bytes, parsed: Any) -> Encoding:
    """The exact bytes a PUT body carries for each allocation parameters object (style `compact` if not found)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return COMPACT
    decoder = json.JSONDecoder()
    found = []
    for match in _PARAMETERS.finditer(text):
        before = text[: match.start()].rstrip()
        if not before.endswith(("{", ",")):
            continue  # the word inside a string, not a member name
        try:
            _, end = decoder.raw_decode(text, match.end())
        except ValueError:
            return COMPACT
        found.append(text[match.end() : end])
    paths = _key_paths(parsed, "parameters")
    if len(found) != len(paths):
        return COMPACT
    chosen = tuple(
        raw_value
        for path, raw_value in zip(paths, found, strict=True)
        if path[:4] == ALLOCATION_CONFIG and len(path) == 7 and path[5] == "opaque"
    )
    return chosen


def encode(value: Any, style: str) -> str:
    if style == CANONICAL:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if style == SPACED:
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def allocation_parameters(obj: Any, style: str) -> tuple[str, ...] | None:
    """The bytes of each opaque parameters object of a claim's allocation, as a write of `style` stores them."""
    allocation = ((obj or {}).get("status") or {}).get("allocation")
    if not isinstance(allocation, dict):
        return None
    configs = (allocation.get("devices") or {}).get("config") or []
    return tuple(
        encode(((c or {}).get("opaque") or {}).get("parameters"), style) for c in configs if isinstance(c, dict)
    )
