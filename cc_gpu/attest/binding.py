"""What a relying party checks beyond the signature: whose key signed, and whether the token is about *this* claim.

The kubelet plugin signs each verdict with its node's own key (key id `<node>.k<version>`) and publishes the public
keys in a per-node ConfigMap (`data` entries `<key id>.pem`, annotation `cc-gpu.io/node`). A token is accepted for
a workload only when the key that signed it belongs to the node the token names (so one node cannot speak for
another), and the token names the claim UID and pod UID the workload expects. Pure functions over plain data: the
ConfigMap arrives as the JSON or YAML a client fetched, never through an API client here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cc_gpu.attest.errors import TokenError

NODE_ANNOTATION = "cc-gpu.io/node"
CLAIM_UID = "x-cc-gpu-claim-uid"
POD_UIDS = "x-cc-gpu-pod-uids"
NODE = "x-cc-gpu-node"


# The key-id grammar, in one place: `<node>.k<version>`, the node a Kubernetes node name (a DNS subdomain), the version
# a decimal number without leading zeros. The chart's admission policy for published keys checks the same grammar
# with this very version pattern (tests/deploy/test_helm_chart.py reads it back from the rendered policy).
KEY_VERSION_PATTERN = "[1-9][0-9]{0,8}"
NODE_NAME_PATTERN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
KEY_ID_RE = re.compile(f"(?P<node>{NODE_NAME_PATTERN})[.]k(?P<version>{KEY_VERSION_PATTERN})")


def key_id(node: str, version: int) -> str:
    """The key id of `version` of `node`'s signing key; refuses what the grammar does not allow."""
    kid = f"{node}.k{version}"
    if node_of_key_id(kid) != node:
        raise TokenError(f"{kid!r} is not a key id <node>.k<version>")
    return kid


def node_of_key_id(kid: str) -> str | None:
    """`node-a.k3` -> `node-a`; None when the key id does not follow the grammar."""
    m = KEY_ID_RE.fullmatch(kid)
    return m.group("node") if m and len(m.group("node")) <= 253 else None


def keys_from_configmap(
    doc: Mapping[str, Any], warn: Callable[[str], None] | None = None
) -> dict[str, ec.EllipticCurvePublicKey]:
    """The P-384 public keys a node published.

    A ConfigMap without a node is refused as a whole. An entry that is not a well-formed key of that node (another
    node's key id, a malformed id, not P-384 PEM) is skipped and reported through `warn`, never trusted: one bad
    entry must not stop relying parties from checking every other token.
    """
    if doc.get("kind") not in (None, "ConfigMap"):
        raise TokenError(f"expected a ConfigMap, got {doc.get('kind')!r}")
    meta = doc.get("metadata") or {}
    node = (meta.get("annotations") or {}).get(NODE_ANNOTATION)
    if not isinstance(node, str) or not node:
        raise TokenError(f"ConfigMap {meta.get('name')!r} has no {NODE_ANNOTATION} annotation")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for name, pem in (doc.get("data") or {}).items():
        try:
            keys[_entry_kid(str(name), node)] = _entry_key(str(name), pem)
        except TokenError as e:
            if warn is not None:
                warn(f"ConfigMap of node {node!r}: entry skipped: {e}")
    if not keys:
        raise TokenError(f"ConfigMap of node {node!r} publishes no keys")
    return keys


def _entry_kid(name: str, node: str) -> str:
    if not name.endswith(".pem"):
        raise TokenError(f"{name[:80]!r} is not <key id>.pem")
    kid = name.removesuffix(".pem")
    owner = node_of_key_id(kid)
    if owner is None:
        raise TokenError(f"{kid[:80]!r} is not a key id <node>.k<version>")
    if owner != node:
        raise TokenError(f"key {kid!r} belongs to another node")
    return kid


def _entry_key(name: str, pem: object) -> ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(str(pem).encode())
    except ValueError as e:
        raise TokenError(f"{name!r} is not a PEM public key") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise TokenError(f"{name!r} is not EC P-384")
    return key


def merge_keys(groups: Iterable[Mapping[str, ec.EllipticCurvePublicKey]]) -> dict[str, ec.EllipticCurvePublicKey]:
    out: dict[str, ec.EllipticCurvePublicKey] = {}
    for group in groups:
        for kid, key in group.items():
            if kid in out:
                raise TokenError(f"key id {kid!r} is published twice")
            out[kid] = key
    return out


def check_binding(
    claims: Mapping[str, Any],
    kid: str,
    *,
    claim_uid: str | None = None,
    pod_uid: str | None = None,
    node: str | None = None,
) -> None:
    """Raise `TokenError` unless the (already signature-checked) token is bound as the caller expects."""
    key_node = node_of_key_id(kid)
    token_node = claims.get(NODE)
    if key_node is not None and token_node != key_node:
        raise TokenError(f"token {_names('node', token_node)} but is signed by the key of node {key_node!r}")
    if node is not None and token_node != node:
        raise TokenError(f"token {_names('node', token_node)}, expected node {node!r}")
    if claim_uid is not None and claims.get(CLAIM_UID) != claim_uid:
        raise TokenError(f"token {_names('claim', claims.get(CLAIM_UID))}, expected claim {claim_uid!r}")
    if pod_uid is not None:
        pods = claims.get(POD_UIDS)
        if not isinstance(pods, list) or pod_uid not in pods:
            raise TokenError(f"token is not issued for pod {pod_uid!r}")


def _names(what: str, value: object) -> str:
    """`names node 'a'`, or `names no node` for a token without that claim (never a bare None in a message)."""
    return f"names no {what}" if value is None else f"names {what} {value!r}"
