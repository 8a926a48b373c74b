"""A kubelet double: registers DRA plugins the way the kubelet does and calls them over real gRPC.

It watches the plugin registry directory for new sockets (names starting with `.` are ignored), calls `GetInfo` with
a one-second timeout, checks the answer (type `DRAPlugin`, a non-empty version list), picks the first version it
speaks in the plugin's order, and answers `NotifyRegistrationStatus`. A deleted socket deregisters the plugin. Then
`prepare`/`unprepare` call `NodePrepareResources`/`NodeUnprepareResources` on the chosen version, with the kubelet's
45 s deadline, and check that every claim of the request is in the response. The real kubelet uses inotify; the double
polls the directory every 20 ms and compares inode and change time (so a socket replaced by a restarted plugin counts as
new), which changes when it notices a socket, not what it does then.
"""

from __future__ import annotations

import contextlib
import stat
import threading
import time
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

    def _scan(self) -> dict[Path, tuple[int, int]]:
        out: dict[Path, tuple[int, int]] = {}
        for p in self.registry_dir.iterdir():
            if p.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                if stat.S_ISSOCK(st.st_mode):
                    out[p] = (st.st_ino, st.st_ctime_ns)  # inodes are reused; the change time is not
        return out

    def _watch(self) -> None:
        seen: dict[Path, tuple[int, int]] = {}
        while not self._stop.is_set():
            now = self._scan()
            for sock, inode in seen.items():
                if now.get(sock) != inode:  # deleted, or replaced by a new socket (a restarted plugin)
                    self._deregister(sock)
            for sock, inode in sorted(now.items()):
                if seen.get(sock) != inode:
                    self._register(sock)
            seen = now
            time.sleep(0.02)

    def _register(self, sock: Path) -> None:
        channel = grpc.insecure_channel(f"unix://{sock}")
        try:
            reg = reg_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            info = reg.GetInfo(reg_pb.InfoRequest(), timeout=1.0)
        except grpc.RpcError as e:
            channel.close()
            self.refused[str(sock)] = f"GetInfo failed: {e.code()}"
            return
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
                pb, grpc_mod = KNOWN_VERSIONS[version]
                dra_channel = grpc.insecure_channel(f"unix://{info.endpoint}")
                self.plugins[info.name] = RegisteredPlugin(
                    info.name, info.endpoint, version, tuple(info.supported_versions), sock, dra_channel,
                    grpc_mod.DRAPluginStub(dra_channel), pb,
                )
                self.registrations += 1
            self._changed.notify_all()

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
