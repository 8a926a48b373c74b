"""What a relying party checks beyond the signature: whose key signed, and whether the token is about *this* claim.

The kubelet plugin signs each verdict with its node's own key (key id `<node>.k<version>`) and publishes the public
keys in a per-node ConfigMap (`data` entries `<key id>.pem`, annotation `cc-gpu.io/node`). A token is accepted for
a workload only when the key that signed it belongs to the node the token names (so one node cannot speak for
another), and the token names the claim UID and pod UID the workload expects. Pure functions over plain data: the
ConfigMap arrives as the JSON or YAML a client fetched, never through an API client here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cc_gpu.attest.errors import TokenError

NODE_ANNOTATION = "cc-gpu.io/node"
CLAIM_UID = "x-cc-gpu-claim-uid"
POD_UIDS = "x-cc-gpu-pod-uids"
NODE = "x-cc-gpu-node"


def node_of_key_id(kid: str) -> str | None:
    """`node-a.k3` -> `node-a`; None when the key id is not a node key id."""
    node, sep, version = kid.rpartition(".k")
    return node if sep and node and version.isdigit() else None


def keys_from_configmap(doc: Mapping[str, Any]) -> dict[str, ec.EllipticCurvePublicKey]:
    """The P-384 public keys a node published; entries of another node's key ids are refused, not skipped."""
    if doc.get("kind") not in (None, "ConfigMap"):
        raise TokenError(f"expected a ConfigMap, got {doc.get('kind')!r}")
    meta = doc.get("metadata") or {}
    node = (meta.get("annotations") or {}).get(NODE_ANNOTATION)
    if not isinstance(node, str) or not node:
        raise TokenError(f"ConfigMap {meta.get('name')!r} has no {NODE_ANNOTATION} annotation")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for name, pem in (doc.get("data") or {}).items():
        kid = str(name).removesuffix(".pem")
        if node_of_key_id(kid) != node:
            raise TokenError(f"ConfigMap of node {node!r} publishes key {kid!r} of another node")
        try:
            key = load_pem_public_key(str(pem).encode())
        except ValueError as e:
            raise TokenError(f"key {kid!r} is not a PEM public key") from e
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
            raise TokenError(f"key {kid!r} is not EC P-384")
        keys[kid] = key
    if not keys:
        raise TokenError(f"ConfigMap of node {node!r} publishes no keys")
    return keys


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
        raise TokenError(f"token names node {token_node!r} but is signed by the key of node {key_node!r}")
    if node is not None and token_node != node:
        raise TokenError(f"token was issued on node {token_node!r}, expected {node!r}")
    if claim_uid is not None and claims.get(CLAIM_UID) != claim_uid:
        raise TokenError(f"token is for claim {claims.get(CLAIM_UID)!r}, expected {claim_uid!r}")
    if pod_uid is not None:
        pods = claims.get(POD_UIDS)
        if not isinstance(pods, list) or pod_uid not in pods:
            raise TokenError(f"token is not issued for pod {pod_uid!r}")
