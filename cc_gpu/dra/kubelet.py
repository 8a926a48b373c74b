"""A kubelet double: registers DRA plugins the way the kubelet does and calls them over real gRPC.

It watches the plugin registry directory for new sockets (names starting with `.` are ignored), calls `GetInfo` with
a one-second timeout, checks the answer (type `DRAPlugin`, a non-empty version list), picks the first version it
speaks in the plugin's order, and answers `NotifyRegistrationStatus`. A deleted socket deregisters the plugin. Then
`prepare`/`unprepare` call `NodePrepareResources`/`NodeUnprepareResources` on the chosen version, with the kubelet's
45 s deadline, and check that every claim of the request is in the response. Like the kubelet's plugin watcher it
registers the sockets already present at start and then follows inotify create and delete events.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import stat
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cc_gpu.dra.proto import dra_v1_pb2 as v1
from cc_gpu.dra.proto import dra_v1_pb2_grpc as v1_grpc
from cc_gpu.dra.proto import dra_v1beta1_pb2 as v1beta1
from cc_gpu.dra.proto import dra_v1beta1_pb2_grpc as v1beta1_grpc
from cc_gpu.dra.proto import pluginregistration_pb2 as reg_pb
from cc_gpu.dra.proto import pluginregistration_pb2_grpc as reg_grpc

KNOWN_VERSIONS = {"v1.DRAPlugin": (v1, v1_grpc), "v1beta1.DRAPlugin": (v1beta1, v1beta1_grpc)}
PREPARE_TIMEOUT = 45.0
RETRY_SECONDS = 0.2  # how soon a registration whose GetInfo failed is tried again


_IN_CREATE, _IN_DELETE, _IN_MOVED_FROM, _IN_MOVED_TO = 0x100, 0x200, 0x40, 0x80
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then `len` bytes of name)


class _Inotify:
    """A minimal inotify watch on one directory (Linux), through libc: create and delete events by file name."""

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = _IN_CREATE | _IN_DELETE | _IN_MOVED_FROM | _IN_MOVED_TO
        if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {directory} failed")

    def __enter__(self) -> _Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self, timeout: float) -> list[tuple[str, str]]:
        """Events within `timeout` seconds, as ("create" | "delete", name)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, offset = [], 0
        while offset < len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0").decode()
            offset += _EVENT.size + length
            if mask & (_IN_CREATE | _IN_MOVED_TO):
                out.append(("create", name))
            elif mask & (_IN_DELETE | _IN_MOVED_FROM):
                out.append(("delete", name))
        return out


class RegistrationError(Exception):
    """The double refused a plugin, as the kubelet would."""


@dataclass
class RegisteredPlugin:
    name: str
    endpoint: str
    version: str
    versions: tuple[str, ...]
    socket: Path
    channel: grpc.Channel
    stub: Any
    pb: Any


@dataclass(frozen=True)
class PrepareResult:
    """Per-claim outcome: the devices as plain tuples (request names, pool, device, CDI ids) or an error."""

    devices: tuple[tuple[tuple[str, ...], str, str, tuple[str, ...]], ...] = ()
    error: str = ""


@dataclass
class KubeletDouble:
    registry_dir: Path
    speaks: tuple[str, ...] = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
    plugins: dict[str, RegisteredPlugin] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    registrations: int = 0  # successful registrations so far, to wait for a fresh one after a restart
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._watch, name="kubelet-registry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        for p in self.plugins.values():
            p.channel.close()

    def _sockets(self) -> set[Path]:
        out = set()
        for p in self.registry_dir.iterdir():
            if not p.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(p.stat().st_mode):
                        out.add(p)
        return out

    def _watch(self) -> None:
        """Register what is there, then follow inotify create/delete events, as the kubelet's plugin watcher does.

        A socket whose GetInfo fails (created but not yet listening) stays pending and is retried, like the kubelet's
        reconciler retries a failed registration.
        """
        pending: set[Path] = set()
        with _Inotify(self.registry_dir) as events:
            pending |= self._sockets()
            while not self._stop.is_set():
                for sock in sorted(pending):
                    if self._register(sock):
                        pending.discard(sock)
                for kind, name in events.read(RETRY_SECONDS if pending else 0.1):
                    path = self.registry_dir / name
                    if name.startswith("."):
                        continue
                    if kind == "delete":
                        pending.discard(path)
                        self._deregister(path)
                    elif kind == "create" and path in self._sockets():
                        pending.add(path)
                pending &= self._sockets()

    def _register(self, sock: Path) -> bool:
        """Try to register the plugin behind `sock`; False when it should be tried again later."""
        channel = grpc.insecure_channel(f"unix://{sock}")
        try:
            reg = reg_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            info = reg.GetInfo(reg_pb.InfoRequest(), timeout=1.0)
        except grpc.RpcError as e:
            channel.close()
            self.refused[str(sock)] = f"GetInfo failed: {e.code()}"
            return False
        error = ""
        version = next((v for v in info.supported_versions if v in self.speaks), "")
        if info.type != "DRAPlugin":
            error = f"plugin type {info.type!r} is not DRAPlugin"
        elif not info.supported_versions:
            error = "plugin lists no supported versions"
        elif not version:
            error = f"none of the versions {list(info.supported_versions)} is supported"
        try:
            reg.NotifyRegistrationStatus(reg_pb.RegistrationStatus(plugin_registered=not error, error=error),
                                         timeout=1.0)
        finally:
            channel.close()
        with self._changed:
            if error:
                self.refused[str(sock)] = error
            else:
                self.refused.pop(str(sock), None)
                pb, grpc_mod = KNOWN_VERSIONS[version]
                dra_channel = grpc.insecure_channel(f"unix://{info.endpoint}")
                self.plugins[info.name] = RegisteredPlugin(
                    info.name, info.endpoint, version, tuple(info.supported_versions), sock, dra_channel,
                    grpc_mod.DRAPluginStub(dra_channel), pb,
                )
                self.registrations += 1
            self._changed.notify_all()
        return True

    def _deregister(self, sock: Path) -> None:
        with self._changed:
            for name, p in list(self.plugins.items()):
                if p.socket == sock:
                    p.channel.close()
                    del self.plugins[name]
            self._changed.notify_all()

    def wait_registered(self, driver: str, timeout: float = 10.0, after: int = 0) -> RegisteredPlugin:
        """Wait until `driver` is registered, by a registration later than the `after`-th one."""
        with self._changed:
            if not self._changed.wait_for(lambda: driver in self.plugins and self.registrations > after, timeout):
                raise RegistrationError(f"plugin {driver} did not register within {timeout}s: {self.refused}")
            return self.plugins[driver]

    def wait_deregistered(self, driver: str, timeout: float = 10.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: driver not in self.plugins, timeout):
                raise RegistrationError(f"plugin {driver} is still registered after {timeout}s")

    def prepare(self, driver: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, PrepareResult]:
        """NodePrepareResources for (namespace, name, uid) claims; maps uid -> result."""
        p = self.plugins[driver]
        request = p.pb.NodePrepareResourcesRequest(
            claims=[p.pb.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims]
        )
        response = p.stub.NodePrepareResources(request, timeout=PREPARE_TIMEOUT)
        missing = {uid for _, _, uid in claims} - set(response.claims)
        if missing:
            raise RegistrationError(f"plugin left out {len(missing)} claims: {sorted(missing)}")
        out: dict[str, PrepareResult] = {}
        for uid, r in response.claims.items():
            devices = tuple(
                (tuple(d.request_names), d.pool_name, d.device_name, tuple(d.cdi_device_ids)) for d in r.devices
            )
            out[uid] = PrepareResult(devices, r.error)
        return out

    def unprepare(self, driver: str, claims: Sequence[tuple[str, str, str]]) -> dict[str, str]:
        """NodeUnprepareResources; maps uid -> error ('' on success)."""
        p = self.plugins[driver]
        request = p.pb.NodeUnprepareResourcesRequest(
            claims=[p.pb.Claim(namespace=ns, name=name, uid=uid) for ns, name, uid in claims]
        )
        response = p.stub.NodeUnprepareResources(request, timeout=PREPARE_TIMEOUT)
        missing = {uid for _, _, uid in claims} - set(response.claims)
        if missing:
            raise RegistrationError(f"plugin left out {len(missing)} claims: {sorted(missing)}")
        return {uid: r.error for uid, r in response.claims.items()}
