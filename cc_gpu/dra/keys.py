"""The node's token signing keys: one ES384 key per node, kept in the plugin's state directory, rotated, published.

Each node signs verdict tokens with its own key, named `<node>.k<version>`, so a compromised node can forge tokens
only under its own name: a relying party checks that the token's `x-cc-gpu-node` claim is the node named by the key
id, and the publication ConfigMap (`cc-gpu-token-keys-<node>`) is writable only by that node's plugin (an admission
policy in the deployment manifests ties the name to the requesting node).

Private keys are created with mode 0600 in a 0700 directory, never leave it and are never logged. A key is rotated
on command (`cc-gpu keys rotate`) or when older than the configured age; the newest `keep` public keys stay
published so tokens signed just before a rotation still verify until they expire. A private key is needed only
while it is the current one: once its successor is older than the overlap window (the token lifetime, so a signer
taken just before the rotation has finished), the old private key is deleted and only its public half
(`<version>.pub.pem`) is kept for publication.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from cc_gpu.attest.binding import NODE_ANNOTATION
from cc_gpu.attest.binding import key_id as _key_id
from cc_gpu.attest.errors import TokenError
from cc_gpu.errors import CheckpointError
from cc_gpu.files import write_atomic
from cc_gpu.kube.api import JsonObject, KubeApi
from cc_gpu.kube.errors import AlreadyExistsError, ConflictError, NotFoundError

log = logging.getLogger("cc_gpu.dra.keys")

INDEX = "keys.json"
CONFIGMAP_PREFIX = "cc-gpu-token-keys-"
KEYS_LABEL = "cc-gpu.io/token-keys"


class KeyStoreError(CheckpointError):
    """The key directory is unreadable or holds something that is not this node's key."""


def key_id(node: str, version: int) -> str:
    """`<node>.k<version>`, by the one grammar in `attest/binding.py`."""
    try:
        return _key_id(node, version)
    except TokenError as e:
        raise KeyStoreError(str(e)) from e


@dataclass(frozen=True)
class NodeKey:
    kid: str
    version: int
    created: datetime
    private: ec.EllipticCurvePrivateKey | None  # None once the key was rotated out and its private half deleted
    public: ec.EllipticCurvePublicKey | None = None

    def public_pem(self) -> str:
        key = self.public or (self.private.public_key() if self.private is not None else None)
        assert key is not None
        return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()

    @property
    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        if self.private is None:
            raise KeyStoreError(f"the private half of {self.kid} was deleted after rotation")
        return self.private


class NodeKeyStore:
    """`<dir>/keys.json` (versions and creation times) and `<dir>/<version>.pem` (the private keys, 0600)."""

    def __init__(
        self, path: Path, node: str, max_age: timedelta, keep: int = 3, *,
        clock: Callable[[], datetime] | None = None, overlap: timedelta = timedelta(hours=1),
    ) -> None:
        self.path = path
        self.node = node
        self.max_age = max_age
        self.overlap = overlap
        self.keep = max(1, keep)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._loaded: dict[int, NodeKey] = {}

    def _index(self) -> dict[int, datetime]:
        try:
            raw = json.loads((self.path / INDEX).read_text())
            return {int(v): datetime.fromisoformat(t) for v, t in raw["keys"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise KeyStoreError(f"key index {self.path / INDEX} is unreadable: {e}") from e

    def _write_index(self, index: dict[int, datetime]) -> None:
        body = {"keys": {str(v): t.isoformat() for v, t in sorted(index.items())}}
        write_atomic(self.path / INDEX, (json.dumps(body) + "\n").encode(), mode=0o600)

    def _load(self, version: int, created: datetime) -> NodeKey:
        hit = self._loaded.get(version)
        if hit is not None:
            return hit
        private_path, public_path = self.path / f"{version}.pem", self.path / f"{version}.pub.pem"
        try:
            if private_path.exists():
                key = load_pem_private_key(private_path.read_bytes(), password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
                    raise KeyStoreError(f"signing key {version} in {self.path} is not EC P-384")
                node_key = NodeKey(key_id(self.node, version), version, created, key)
            else:
                public = load_pem_public_key(public_path.read_bytes())
                if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP384R1):
                    raise KeyStoreError(f"public key {version} in {self.path} is not EC P-384")
                node_key = NodeKey(key_id(self.node, version), version, created, None, public)
        except (OSError, ValueError, TypeError) as e:
            raise KeyStoreError(f"signing key {version} in {self.path} is unreadable: {e}") from e
        self._loaded[version] = node_key
        return node_key

    def _prune(self, index: dict[int, datetime]) -> None:
        """Delete the private halves of rotated-out keys whose successor is older than the overlap window."""
        now = self.clock()
        versions = sorted(index)
        for old, successor in itertools.pairwise(versions):
            path = self.path / f"{old}.pem"
            if now - index[successor] < self.overlap or not path.exists():
                continue
            self._ensure_public(old)
            path.unlink(missing_ok=True)
            self._loaded.pop(old, None)
            log.info("rotated-out private key deleted", extra={"kid": key_id(self.node, old)})

    def _ensure_public(self, version: int) -> None:
        public_path = self.path / f"{version}.pub.pem"
        if public_path.exists():
            return
        key = load_pem_private_key((self.path / f"{version}.pem").read_bytes(), password=None)
        pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        write_atomic(public_path, pem, mode=0o600)

    def _create(self, index: dict[int, datetime]) -> int:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        # A key file the index does not list was left by a creation that died before the index was written: it was
        # never used or published, so remove it rather than fail on it for ever (O_EXCL below).
        for stale in self.path.glob("*.pem"):
            if stale.stem.isdigit() and int(stale.stem) not in index:
                stale.unlink(missing_ok=True)
        version = max(index, default=0) + 1
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        fd = os.open(self.path / f"{version}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        write_atomic(self.path / f"{version}.pub.pem",
                     key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), mode=0o600)
        index[version] = self.clock()
        for old in sorted(index)[: -self.keep]:
            (self.path / f"{old}.pem").unlink(missing_ok=True)
            (self.path / f"{old}.pub.pem").unlink(missing_ok=True)
            self._loaded.pop(old, None)
            del index[old]
        self._write_index(index)
        log.info("token signing key created", extra={"kid": key_id(self.node, version)})
        return version

    def current(self) -> NodeKey:
        """The signing key: created on first use, rotated when older than the maximum age."""
        with self._lock:
            index = self._index()
            if not index or self.clock() - index[max(index)] >= self.max_age:
                self._create(index)
            self._prune(index)
            version = max(index)
            return self._load(version, index[version])

    def rotate(self) -> NodeKey:
        with self._lock:
            index = self._index()
            version = self._create(index)
            return self._load(version, index[version])

    def published(self) -> list[NodeKey]:
        """The keys whose public halves stay published (newest last)."""
        with self._lock:
            index = self._index()
            self._prune(index)
            return [self._load(v, index[v]) for v in sorted(index)[-self.keep :]]


def configmap_name(node: str) -> str:
    return f"{CONFIGMAP_PREFIX}{node}"


def configmap_body(node: str, namespace: str, keys: list[NodeKey]) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(node),
            "namespace": namespace,
            "labels": {KEYS_LABEL: "true"},
            "annotations": {NODE_ANNOTATION: node},
        },
        "data": {f"{k.kid}.pem": k.public_pem() for k in keys},
    }


def publish(kube: KubeApi, store: NodeKeyStore, namespace: str) -> bool:
    """Make the node's ConfigMap list exactly the published public keys; True when it wrote."""
    want = configmap_body(store.node, namespace, store.published())
    for _ in range(3):
        try:
            current = kube.get_config_map(namespace, want["metadata"]["name"])
        except NotFoundError:
            try:
                kube.create_config_map(namespace, want)
                return True
            except (AlreadyExistsError, ConflictError):
                continue
        meta = current.get("metadata") or {}
        if current.get("data") == want["data"] and (meta.get("annotations") or {}).get(NODE_ANNOTATION) == store.node:
            return False
        body = {**want, "metadata": {**want["metadata"], "resourceVersion": meta.get("resourceVersion")}}
        try:
            kube.update_config_map(namespace, body)
            return True
        except ConflictError:
            continue
    return False
