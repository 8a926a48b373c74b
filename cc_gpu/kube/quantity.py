"""Kubernetes resource quantities in the canonical form the API server stores them in.

The server parses every `Quantity` (a ResourceSlice's `capacity[].value`, for instance) and writes it back in its
canonical form: `1000` becomes `1k`, `2048Ki` becomes `2Mi`, `1024` stays `1024`. A client that compares what it
wrote with what it reads back must compare canonical forms, or it sees a change that is not there and writes again.

Only whole numbers without an exponent are handled (what the driver writes: byte counts); anything else is returned
unchanged, and callers then fall back on comparing what the server returned for their own last write.
"""

from __future__ import annotations

import re

_DECIMAL = {"": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_BINARY_SUFFIX = {v: k for k, v in _BINARY.items()}
_FORM = re.compile(r"^(\+?)([0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|)$")


def canonical(quantity: str) -> str:
    """The server's canonical spelling of a whole, non-negative quantity; other quantities unchanged."""
    match = _FORM.match(quantity)
    if match is None:
        return quantity
    number, suffix = int(match.group(2)), match.group(3)
    if suffix in _BINARY:
        value = number << _BINARY[suffix]
        if value >= 1024:
            exponent = 0
            while value % 1024 == 0 and exponent < 60:
                value //= 1024
                exponent += 10
            return f"{value}{_BINARY_SUFFIX[exponent]}"
        number, suffix = value, ""
    value = number * 10 ** _DECIMAL[suffix]
    if value == 0:
        return "0"
    exponent = 0
    while value % 1000 == 0 and exponent < 18:
        value //= 1000
        exponent += 3
    return f"{value}{_DECIMAL_SUFFIX[exponent]}"
