"""The persisted record of a bound IOMMU group, and the per-group lock.

The record holds each device's original driver and driver_override. It is written (atomically: temp file, fsync,
rename, fsync of the directory) *before* the first sysfs write of a bind, so `restore` works from another process and
after a crash, and a restarted plugin can tell an interrupted bind (`phase: binding`) from a prepared group
(`phase: bound`, never touched by a restart). The lock is an flock on a file per group: one operation per group at a
time across threads and processes, while different groups proceed in parallel.

On-disk format, version 1: {"version": 1, "group": N, "owner": str, "phase": "binding"|"bound"|"restoring",
"backend": "legacy"|"iommufd", "devices": [{"bdf", "original_driver", "original_override", "target_driver"}]}.
Readers reject other versions and malformed files with `RecordCorruptError` and leave them in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cc_gpu.host.errors import GroupLockedError, RecordCorruptError

RECORD_VERSION = 1
PHASES = ("binding", "bound", "restoring")


@dataclass(frozen=True)
class DeviceRecord:
    bdf: str
    original_driver: str | None
    original_override: str | None
    target_driver: str


@dataclass(frozen=True)
class GroupRecord:
    group: int
    owner: str
    phase: str
    backend: str
    devices: tuple[DeviceRecord, ...]

    def to_json(self) -> str:
        data: dict[str, Any] = {"version": RECORD_VERSION, **asdict(self)}
        data["devices"] = [asdict(d) for d in self.devices]
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> GroupRecord:
        try:
            data = json.loads(text)
            if data.get("version") != RECORD_VERSION:
                raise ValueError(f"unsupported record version {data.get('version')!r}")
            if data["phase"] not in PHASES:
                raise ValueError(f"unknown phase {data['phase']!r}")
            return cls(
                group=int(data["group"]),
                owner=str(data["owner"]),
                phase=str(data["phase"]),
                backend=str(data["backend"]),
                devices=tuple(
                    DeviceRecord(str(d["bdf"]), d["original_driver"], d["original_override"], str(d["target_driver"]))
                    for d in data["devices"]
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RecordCorruptError(f"group record {where} is unreadable ({e}); inspect or remove it by hand") from e


class RecordStore:
    """Group records and locks under `<state>/vfio/`."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "vfio"

    def _path(self, group: int) -> Path:
        return self.dir / f"group-{group}.json"

    def read(self, group: int) -> GroupRecord | None:
        path = self._path(group)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return GroupRecord.from_json(text, str(path))

    def write(self, record: GroupRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(record.group)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(record.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fsync_dir()

    def delete(self, group: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(group).unlink()
            self._fsync_dir()

    def groups(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        out = []
        for name in os.listdir(self.dir):
            if name.startswith("group-") and name.endswith(".json"):
                with contextlib.suppress(ValueError):
                    out.append(int(name[len("group-") : -len(".json")]))
        return sorted(out)

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lock(self, group: int, timeout: float, poll: float = 0.02) -> Iterator[None]:
        """Hold the group's lock; `GroupLockedError` if another operation keeps it longer than `timeout`."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f"group-{group}.lock", "a+") as f:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise GroupLockedError(
                            f"IOMMU group {group} is locked by another operation for more than {timeout:.0f}s; "
                            "retry later", retry_after=1.0,
                        ) from None
                    time.sleep(poll)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
