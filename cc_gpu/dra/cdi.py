"""Kata-ready CDI specs: one transient spec file per claim, plus an optional per-pod spec for released Kata.

Kata's CDI loader is strict and a single bad file in a spec directory breaks every pod on the node, so this module
builds specs that satisfy every rule Kata imposes: cdiVersion 0.5.0 (the highest the loaders in Kata's runtimes
accept without needing newer fields), device-level `deviceNodes` only, with real host paths, never legacy and iommufd
nodes mixed in one device, a kind no other vendor uses, and atomic writes (temp file in the same directory, fsync,
rename). Device names are `<claimUID>-<device>`.

The per-pod spec serves the annotation path: an admission policy gives the pod `cdi.k8s.io/cc-gpu:
cc-gpu.io/vfio=pod-<uid>`, and released Kata cold-plugs what that device names. That device is the union of the nodes of
all the pod's prepared claims.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_gpu.dra.errors import CdiError
from cc_gpu.files import UnsafeNameError, remove_stale_temps, safe_name, write_atomic

CDI_VERSION = "0.5.0"
VENDOR = "cc-gpu.io"
CLASS = "vfio"
KIND = f"{VENDOR}/{CLASS}"
# The released-Kata annotation path: the pod annotation key the admission policy sets, and the device-name prefix
# of the per-pod device it names. Changing one here changes it everywhere.
POD_ANNOTATION = "cdi.k8s.io/cc-gpu"
POD_DEVICE_PREFIX = "pod-"

_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "noexec", "bind")
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
_LEGACY_RE = re.compile(r"^/dev/vfio/(vfio|[0-9]+)$")
_IOMMUFD_RE = re.compile(r"^/dev/(iommu|vfio/devices/vfio[0-9]+)$")


@dataclass(frozen=True)
class CdiMount:
    """A read-only bind mount of one host file (the attestation token, for runtimes that share host files)."""

    host_path: str
    container_path: str


@dataclass(frozen=True)
class CdiDevice:
    """One CDI device: its name, the host device nodes it passes through, and optional env and read-only mounts."""

    name: str
    nodes: tuple[str, ...]
    env: tuple[str, ...] = ()  # NAME=value; env travels inside the OCI spec, so it reaches a confidential guest
    mounts: tuple[CdiMount, ...] = ()


def qualified(name: str) -> str:
    """The fully qualified CDI id of a device of our kind."""
    return f"{KIND}={name}"


def device_name(claim_uid: str, device: str) -> str:
    return f"{claim_uid}-{device}"


def _check_nodes(name: str, nodes: Sequence[str]) -> None:
    if not nodes:
        raise CdiError(f"CDI device {name}: no device nodes")
    legacy = [n for n in nodes if _LEGACY_RE.match(n)]
    iommufd = [n for n in nodes if _IOMMUFD_RE.match(n)]
    if len(legacy) + len(iommufd) != len(nodes):
        odd = [n for n in nodes if n not in legacy and n not in iommufd]
        raise CdiError(f"CDI device {name}: {odd[0]!r} is not a VFIO device node")
    if legacy and iommufd:
        raise CdiError(f"CDI device {name}: legacy and iommufd VFIO nodes must not be mixed")


def build_spec(devices: Iterable[CdiDevice]) -> dict[str, Any]:
    """The spec document for `devices`, validated against the Kata rules."""
    out = []
    seen: set[str] = set()
    for dev in devices:
        if not _NAME_RE.match(dev.name):
            raise CdiError(f"CDI device name {dev.name!r} is not valid")
        if dev.name in seen:
            raise CdiError(f"CDI device name {dev.name!r} appears twice")
        seen.add(dev.name)
        _check_nodes(dev.name, dev.nodes)
        nodes = list(dict.fromkeys(dev.nodes))
        edits: dict[str, Any] = {"deviceNodes": [{"path": p, "hostPath": p} for p in nodes]}
        if dev.env:
            bad = [e.split("=", 1)[0] for e in dev.env if not _ENV_RE.match(e)]
            if bad:
                raise CdiError(f"CDI device {dev.name}: {bad[0]!r} is not a NAME=value environment entry")
            edits["env"] = list(dev.env)
        if dev.mounts:
            for m in dev.mounts:
                if not (m.host_path.startswith("/") and m.container_path.startswith("/")):
                    raise CdiError(f"CDI device {dev.name}: mount paths must be absolute ({m.host_path!r})")
            edits["mounts"] = [
                {"hostPath": m.host_path, "containerPath": m.container_path, "options": list(MOUNT_OPTIONS)}
                for m in dev.mounts
            ]
        out.append({"name": dev.name, "containerEdits": edits})
    if not out:
        raise CdiError("a CDI spec needs at least one device")
    return {"cdiVersion": CDI_VERSION, "kind": KIND, "devices": out}


class CdiWriter:
    """Writes and removes this driver's spec files in one CDI root (`/var/run/cdi` on a node)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def claim_path(self, claim_uid: str) -> Path:
        return self.root / f"{VENDOR}-{CLASS}_{_file_id(claim_uid)}.json"

    def pod_path(self, pod_device: str) -> Path:
        return self.root / f"{VENDOR}-{CLASS}_{_file_id(pod_device)}.json"

    def _write(self, path: Path, spec: dict[str, Any], mode: int = 0o644) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(spec, indent=2) + "\n").encode(), mode=mode)

    def write_claim(self, claim_uid: str, devices: Sequence[CdiDevice]) -> Path:
        """A spec that carries a secret (an attestation token in its env) is 0600: its readers (containerd, the
        Kata shim) run as root, and the CDI root is world-readable."""
        path = self.claim_path(claim_uid)
        self._write(path, build_spec(devices), 0o600 if any(d.env for d in devices) else 0o644)
        return path

    def write_pod(self, pod_device: str, nodes: Sequence[str]) -> Path:
        path = self.pod_path(pod_device)
        self._write(path, build_spec([CdiDevice(pod_device, tuple(nodes))]))
        return path

    def remove_claim(self, claim_uid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.claim_path(claim_uid).unlink()

    def remove_pod(self, pod_device: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pod_path(pod_device).unlink()

    def owned_files(self) -> list[Path]:
        """Every spec file of our kind in the root (for startup reconciliation)."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob(f"{VENDOR}-{CLASS}_*.json"))

    def remove_stale_temps(self) -> int:
        """Remove temp files of interrupted spec writes (never read by CDI loaders, which want *.json/*.yaml)."""
        return remove_stale_temps(self.root, f"{VENDOR}-{CLASS}_")

    @staticmethod
    def id_of(path: Path) -> str:
        """The claim UID or pod device a spec file belongs to."""
        return path.name[len(f"{VENDOR}-{CLASS}_") : -len(".json")]


def _file_id(value: str) -> str:
    """`value` if it can be part of a spec file name (`files.safe_name`, the check for every per-claim file)."""
    try:
        return safe_name(value)
    except UnsafeNameError:
        raise CdiError(f"{value[:80]!r} cannot name a CDI spec file") from None


def pod_device_from_annotation(value: str | None) -> str | None:
    """The per-pod device name if the annotation names one of our kind, else None."""
    if not value:
        return None
    for item in value.split(","):
        kind, _, name = item.strip().partition("=")
        if kind == KIND and name.startswith(POD_DEVICE_PREFIX) and _NAME_RE.match(name):
            return name
    return None
