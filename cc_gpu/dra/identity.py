"""Which GPU identity belongs to which PCI device on this node: evidence must come from the GPU being handed out.

A report is signed by the GPU's device key, but nothing in it names a PCI address: the same genuine report placed
for two devices (a directory of evidence, a replayed file) would verify for both. So the node remembers, per PCI
address, the identity in the evidence (the device certificate's serial, NVIDIA's `ueid`), learned from evidence that
answered a nonce the plugin chose for that very device (NVML at discovery, or the first verified prepare), and
records it in the plugin's state directory. Later evidence for that address must carry the same identity, and an
identity known for one address is refused for any other; a mismatch names both identities. FWID is not used here:
it is a firmware measurement that changes with a VBIOS update, checked only for consistency with the certificate.

A replaced GPU (a board swap) is a mismatch until the admin removes its entry from `gpu-identities.json`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cc_gpu.errors import CheckpointError
from cc_gpu.files import write_atomic

FILE = "gpu-identities.json"


class IdentityStoreError(CheckpointError):
    """The identity record exists but cannot be read; attestation fails closed rather than relearn identities."""


@dataclass(frozen=True)
class KnownIdentity:
    ueid: str
    learned_from: str  # the evidence source it was learned from: nvml | simulated | <provider>+rebind
    learned_at: str


class IdentityMismatchError(Exception):
    """The evidence's identity is not the one this node knows for the device (message names both)."""


class IdentityStore:
    """`bdf -> KnownIdentity`, in memory and, with a path, in `<plugin dir>/gpu-identities.json` (0600)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._known: dict[str, KnownIdentity] = self._read()

    def _read(self) -> dict[str, KnownIdentity]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {str(bdf): KnownIdentity(str(v["ueid"]), str(v["learnedFrom"]), str(v["learnedAt"]))
                    for bdf, v in raw["devices"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise IdentityStoreError(f"GPU identity record {self.path} is unreadable: {e}") from e

    def _write(self) -> None:
        if self.path is None:
            return
        body = {"devices": {bdf: {"ueid": k.ueid, "learnedFrom": k.learned_from, "learnedAt": k.learned_at}
                            for bdf, k in sorted(self._known.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, (json.dumps(body, indent=1) + "\n").encode(), mode=0o600)

    def all(self) -> dict[str, KnownIdentity]:
        with self._lock:
            return dict(self._known)

    def get(self, bdf: str) -> KnownIdentity | None:
        with self._lock:
            return self._known.get(bdf)

    def check(self, bdf: str, ueid: str | None, must_be_known: bool = False) -> None:
        """Raise `IdentityMismatchError` unless `ueid` is the identity known for `bdf`, or (unless `must_be_known`,
        which evidence whose nonce we did not choose needs) nothing is known yet and no other device has it."""
        if not ueid:
            raise IdentityMismatchError("the evidence carries no device identity (ueid)")
        with self._lock:
            known = self._known.get(bdf)
            owner = next((b for b, k in self._known.items() if k.ueid == ueid and b != bdf), None)
        if owner is not None:
            raise IdentityMismatchError(
                f"evidence identity ueid {ueid} belongs to the GPU at {owner} on this node, not to {bdf}"
            )
        if known is None and must_be_known:
            raise IdentityMismatchError(
                f"no identity is known for {bdf} on this node, and evidence with a nonce we did not choose cannot "
                f"establish one (evidence names ueid {ueid}); attest it once with fresh evidence first"
            )
        if known is not None and known.ueid != ueid:
            raise IdentityMismatchError(
                f"evidence identity ueid {ueid} is not the identity {known.ueid} this node knows for {bdf} "
                f"(learned from {known.learned_from} at {known.learned_at})"
            )

    def learn(self, bdf: str, ueid: str, source: str, at: datetime) -> None:
        """Record `ueid` for `bdf` if nothing is known yet (callers pass only evidence for a nonce they chose)."""
        with self._lock:
            if bdf in self._known or any(k.ueid == ueid for k in self._known.values()):
                return
            self._known[bdf] = KnownIdentity(ueid, source, at.isoformat())
            self._write()
