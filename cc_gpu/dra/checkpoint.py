"""The plugin's checkpoint: which claims are prepared, with what, and how far each got.

Unprepare must work when the claim is gone, and a restart must know which devices sit under a running VM, so every
prepare records its progress here: `PrepareStarted` (with the node's boot id) before any side effect, `PrepareCompleted`
(with each device's original driver and the CDI ids) after the CDI spec exists. The file lives on the host under the
plugin directory so both pods of a rolling update share it.

On disk: `{"version": "v1", "checksum": <sha256 of the data bytes>, "data": "<json text>"}`. The checksum covers the
bytes exactly as written, so adding fields never breaks verification. Writes go to a temp file in the same directory,
are fsynced and renamed into place; the generation before is kept as `<name>.prev`. A primary that fails verification
(a bad disk, a hand edit, a truncating copy) is moved aside as `<name>.corrupt-<time>` and the previous generation is
used, so the record of which devices sit on vfio survives: the plugin then rebuilds what that generation lacks from the
host layer's own bind records (see `DeviceState.reconcile`). With both generations unreadable it fails closed.
Read-modify-write happens under an exclusive flock on a sibling lock file, held only for the update itself (never
across a bind), so claims on different groups still prepare in parallel.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cc_gpu.dra.errors import CheckpointCorruptError
from cc_gpu.files import write_atomic

log = logging.getLogger("cc_gpu.dra.checkpoint")

VERSION = "v1"
PREPARE_STARTED = "PrepareStarted"
PREPARE_COMPLETED = "PrepareCompleted"
UNPREPARE_STARTED = "UnprepareStarted"  # unprepare began: a restart finishes it instead of keeping the claim
EARLY_BOUND = "EarlyBound"
"""Bound before the pod landed (binding conditions): the groups are on vfio-pci, no CDI spec yet. The kubelet's
prepare adopts it without touching the host; a restart rolls it back (the watcher binds again if still wanted)."""


@dataclass(frozen=True)
class PreparedDevice:
    """One allocated device of a claim and what preparing it did."""

    request: str
    pool: str
    device: str
    iommu_group: int
    members: tuple[str, ...] = ()  # PCI addresses bound together with it
    original_drivers: Mapping[str, str | None] = field(default_factory=dict)  # bdf -> driver before bind
    device_nodes: tuple[str, ...] = ()  # host paths put into the CDI spec
    cdi_ids: tuple[str, ...] = ()
    reset_on_release: bool = True


@dataclass(frozen=True)
class ClaimEntry:
    """The state of one claim."""

    uid: str
    namespace: str
    name: str
    state: str
    boot_id: str
    devices: tuple[PreparedDevice, ...] = ()
    pod_uid: str = ""
    pod_cdi_device: str = ""  # the pod-level CDI device (annotation path) this claim contributes to, if any
    challenge: Mapping[str, str] = field(default_factory=dict)  # the guest path's challenge (`challenge.py`), if any


def _device_from(raw: Mapping[str, Any]) -> PreparedDevice:
    return PreparedDevice(
        request=str(raw["request"]),
        pool=str(raw["pool"]),
        device=str(raw["device"]),
        iommu_group=int(raw["iommu_group"]),
        members=tuple(raw.get("members", ())),
        original_drivers=dict(raw.get("original_drivers", {})),
        device_nodes=tuple(raw.get("device_nodes", ())),
        cdi_ids=tuple(raw.get("cdi_ids", ())),
        reset_on_release=bool(raw.get("reset_on_release", True)),
    )


def _entry_from(raw: Mapping[str, Any]) -> ClaimEntry:
    # Our own persisted data: fields added by later versions are ignored and missing optional ones defaulted, so a
    # downgrade or upgrade across minor changes keeps working. Unknown *versions* are refused in `decode`.
    return ClaimEntry(
        uid=str(raw["uid"]),
        namespace=str(raw.get("namespace", "")),
        name=str(raw.get("name", "")),
        state=str(raw["state"]),
        boot_id=str(raw.get("boot_id", "")),
        devices=tuple(_device_from(d) for d in raw.get("devices", ())),
        pod_uid=str(raw.get("pod_uid", "")),
        pod_cdi_device=str(raw.get("pod_cdi_device", "")),
        challenge={str(k): str(v) for k, v in (raw.get("challenge") or {}).items()},
    )


def encode(claims: Mapping[str, ClaimEntry]) -> bytes:
    """Serialise the claim map into the on-disk envelope."""
    data = json.dumps({"claims": {uid: asdict(e) for uid, e in sorted(claims.items())}}, sort_keys=True)
    digest = hashlib.sha256(data.encode()).hexdigest()
    return json.dumps({"version": VERSION, "checksum": digest, "data": data}, indent=1).encode() + b"\n"


def decode(raw: bytes) -> dict[str, ClaimEntry]:
    """Parse and verify the envelope; any doubt is a `CheckpointCorruptError`."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointCorruptError(f"checkpoint is not JSON: {e}") from e
    if not isinstance(envelope, dict) or envelope.get("version") != VERSION:
        version = envelope.get("version") if isinstance(envelope, dict) else None
        raise CheckpointCorruptError(f"checkpoint version {version!r} is not supported (want {VERSION})")
    data = envelope.get("data")
    if not isinstance(data, str) or hashlib.sha256(data.encode()).hexdigest() != envelope.get("checksum"):
        raise CheckpointCorruptError("checkpoint checksum mismatch")
    try:
        claims = json.loads(data)["claims"]
        return {str(uid): _entry_from(e) for uid, e in claims.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointCorruptError(f"checkpoint data is malformed: {e}") from e


class Checkpoint:
    """The checkpoint file plus its lock; every update is a read-modify-write under the lock."""

    def __init__(self, directory: Path, name: str = "checkpoint.json") -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / name
        self.prev_path = directory / f"{name}.prev"
        self._lock_path = directory / f"{name}.lock"
        self._thread_lock = threading.Lock()
        self.recovered_from: str | None = None  # why the previous generation had to be used, once that happened

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _read_unlocked(self) -> dict[str, ClaimEntry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            # Never written, or the process died between moving the old generation aside and renaming the new one
            # into place: then `.prev` is exactly the state before that update.
            try:
                return decode(self.prev_path.read_bytes())
            except FileNotFoundError:
                return {}
        try:
            return decode(raw)
        except CheckpointCorruptError as e:
            return self._recover(e)

    def _recover(self, error: CheckpointCorruptError) -> dict[str, ClaimEntry]:
        try:
            claims = decode(self.prev_path.read_bytes())
        except FileNotFoundError:
            raise CheckpointCorruptError(f"{error}; no previous generation to fall back to ({self.path})") from error
        except CheckpointCorruptError as e:
            raise CheckpointCorruptError(f"{error}; the previous generation is unreadable too: {e}") from error
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
        os.replace(self.path, aside)
        write_atomic(self.path, encode(claims))
        self.recovered_from = str(error)
        log.error("checkpoint corrupt; continuing from the previous generation",
                  extra={"error": str(error), "moved_to": str(aside), "claims": len(claims)})
        return claims

    def read(self) -> dict[str, ClaimEntry]:
        """The current claim map (empty when no checkpoint exists yet)."""
        with self._locked():
            return self._read_unlocked()

    def while_locked(self, action: Callable[[dict[str, ClaimEntry]], None]) -> None:
        """Run `action` on the current claim map while no one can change it (for files derived from it)."""
        with self._locked():
            action(self._read_unlocked())

    def get(self, uid: str) -> ClaimEntry | None:
        return self.read().get(uid)

    def update(self, change: Callable[[dict[str, ClaimEntry]], None]) -> dict[str, ClaimEntry]:
        """Apply `change` to the claim map in place and persist it atomically; return the new map."""
        with self._locked():
            claims = self._read_unlocked()
            change(claims)
            content = encode(claims)
            if self.path.exists():
                os.replace(self.path, self.prev_path)
            write_atomic(self.path, content)
            return claims

    def put(self, entry: ClaimEntry) -> None:
        self.update(lambda claims: claims.__setitem__(entry.uid, entry))

    def drop(self, uid: str) -> None:
        def change(claims: dict[str, ClaimEntry]) -> None:
            claims.pop(uid, None)

        self.update(change)
